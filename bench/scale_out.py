"""Scale-out benchmark: pairs through their whole life on a split deployment, with 1
and with 2 workers.

Stack (tests/e2e/scaleout.py, README "Growing past one controller"): two
`openevs api` and W `openevs worker` processes on one PostgreSQL database (a
database of its own per run, dropped after), two standalone agents on mutual TLS.
Each run drives `--pairs` pairs through create -> active -> group failover
(groups of `--group-size`) -> reprotect -> delete, requests spread over both APIs,
and is timed from the first create until the last disk is gone.

The peer is the 1-worker run measured in the same invocation: the bench prints
each run's throughput (pairs/s) and the ratio 2 workers / 1 worker.

Run: nice -n 10 .venv/bin/python bench/scale_out.py [--pairs 20] [--group-size 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import _drop_pg_database, _pg_database  # noqa: E402
from tests.e2e.scaleout import ScaleOutStack, elapsed, lifecycle  # noqa: E402


def run(root: Path, workers: int, pairs: int, group_size: int) -> float:
    """Pairs per second through the whole lifecycle with `workers` workers."""
    name = f"openevs_bench_{uuid.uuid4().hex[:10]}"
    url = _pg_database(name)
    stack = ScaleOutStack(root / f"workers-{workers}", url, apis=2, workers=workers)
    try:
        stack.start()
        seconds = elapsed(lambda: lifecycle(stack, pairs, group_size))
    finally:
        stack.close()
        _drop_pg_database(name)
    rate = pairs / seconds
    print(f"{workers} worker(s): {pairs} pairs in {seconds:.1f} s = {rate:.2f} pairs/s", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--group-size", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="openevs-scale-out-") as tmp:
        one = run(Path(tmp), 1, args.pairs, args.group_size)
        two = run(Path(tmp), 2, args.pairs, args.group_size)
    print(f"throughput 2 workers / 1 worker: {two / one:.2f}")


if __name__ == "__main__":
    main()
