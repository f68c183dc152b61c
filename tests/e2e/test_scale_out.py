"""Scale-out (issue 12, item 6): two `openevs api` and two `openevs worker` processes on
one PostgreSQL database, with standalone agents on mutual TLS, drive pairs through
create -> active -> group failover -> reprotect -> delete. Nothing is left behind,
every transition is logged exactly once across both workers (the line the winner
of each writes), and a worker SIGKILLed while the groups fail over changes nothing
but speed. The same run with many pairs, with 1 and 2 workers: bench/scale_out.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.scaleout import ScaleOutStack, kill_one_worker, lifecycle

pytestmark = pytest.mark.e2e

PAIRS = 4
# What each resource goes through, in order; anything else (a repeat, a gap) fails.
DISK = ["creating -> available", "deleted"]
PAIR = ["creating -> available", "deleted"]
GROUP = [
    "creating -> available",
    "failovering -> failovered",
    "updating -> available",  # reprotect
    "updating -> available",  # its members removed
    "deleted",
]


@pytest.fixture
def stack(tmp_path: Path, pg_database_url: str) -> Iterator[ScaleOutStack]:
    s = ScaleOutStack(tmp_path, pg_database_url)
    try:  # every process is stopped even when the set-up itself fails
        yield s.start()
    finally:
        s.close()


def test_two_apis_two_workers_one_killed_midway(stack: ScaleOutStack) -> None:
    made = lifecycle(stack, PAIRS, midway=lambda: kill_one_worker(stack))
    assert not stack.workers[-1].running

    done = stack.transitions()
    expected = {vid: DISK for vid in made["volumes"]}
    expected |= {pid: PAIR for pid in made["pairs"]} | {gid: GROUP for gid in made["groups"]}
    wrong = {ident: done.get(ident) for ident, path in expected.items() if done.get(ident) != path}
    assert not wrong, f"resources whose transitions were not each done once: {wrong}"
    print(f"\n{sum(map(len, done.values()))} transitions, each once; "
          f"{stack.raced()} steps left to the other worker, which had moved the row first")  # fmt: skip
