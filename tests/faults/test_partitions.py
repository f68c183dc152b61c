"""The partition matrix (issue 10): each scenario once, with the checker's verdict.

Agents of two AZs and a standalone witness, each in its own network
namespace; writers inside the namespaces against every production disk;
the history checked after heal and reprotect/sync (scenarios.py,
checker.py). The randomized long run is `scripts/fault-run --partitions N`.
The last test runs scenario (b) without a witness and asserts that the
checker finds the acknowledged writes a static-priority failover loses.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.faults.harness import record
from tests.faults.partitions import PartitionStack, open_stack
from tests.faults.scenarios import Draw, Result, run

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.fixture(scope="module")
def stack() -> Iterator[PartitionStack]:
    yield from open_stack(PartitionStack, "oevs-part-")


def _passes(result: Result) -> Result:
    v = result.verdict
    print(f"\n{result.draw.label}: {result.row()}")
    record(f"partition_{result.draw.scenario}", trials=1, mode="netns", **{
        k: result.row()[k] for k in ("acked", "lost", "two_primaries", "split", "suspend_s")
    })  # fmt: skip
    assert v.acked > 0
    assert not v.lost, f"{v.lost_writes} acknowledged writes lost: {v.lost[:5]}"
    assert not v.two_primaries, (v.overlapping_units, v.two_primary_instants[:5])
    assert not (v.split_instants or v.final_split), (v.split_instants[:5], v.final_split)
    return result


# Short timings: a cut must outlast the link's detection (5 s) for the arbitration to act.
@pytest.mark.parametrize(
    "draw",
    [
        Draw("a", fault_s=7.0),
        Draw("b", fault_s=8.0, failover_after_s=6.0, suspend_timeout_s=2.0),
        pytest.param(Draw("c", fault_s=7.0), marks=pytest.mark.long),
        pytest.param(Draw("d", fault_s=3.0), marks=pytest.mark.long),
        pytest.param(Draw("e", fault_s=7.0), marks=pytest.mark.long),
        pytest.param(Draw("f", fault_s=10.0, seed=3), marks=pytest.mark.long),
        pytest.param(
            Draw("b", fault_s=8.0, failover_after_s=6.0, kill="a", kill_at_s=3.0, restart_after_s=1.0),
            marks=pytest.mark.long,
        ),
    ],
    ids=lambda d: d.label.replace(" ", ""),  # CI keeps (a) and (b); the rest run in fault-run
)
def test_partition_loses_no_acknowledged_write_and_makes_no_second_primary(
    stack: PartitionStack, draw: Draw
) -> None:
    result = _passes(run(stack, draw))
    if draw.scenario == "b":
        # The isolated old primary acknowledged nothing alone: its users' last ack came
        # before the isolation had been detected, long before the DR side was promoted.
        assert result.figures["old_primary_last_ack_s"] < result.figures["promoted_after_s"]
        assert result.verdict.failed > 0  # its users were told (EIO), not acknowledged


@pytest.mark.long
def test_a_random_process_killed_at_a_random_moment(stack: PartitionStack) -> None:
    seed = int(os.environ.get("OPENEVS_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    draw = Draw(rng.choice("abcf"), fault_s=8.0, failover_after_s=6.0, seed=seed, kill=rng.choice("abw"))
    draw.kill_at_s = round(rng.uniform(0.0, draw.fault_s), 1)
    draw.restart_after_s = round(rng.uniform(0.3, 3.0), 1)
    print(f"\nseed {seed} (OPENEVS_FAULT_SEED={seed} replays it): {draw}")
    _passes(run(stack, draw))


def test_without_a_witness_the_checker_finds_the_lost_writes(stack: PartitionStack) -> None:
    """Scenario (b) in static priority: the isolated primary goes on acknowledging alone,
    the failover promotes the DR side anyway, the reprotect overwrites those writes."""
    result = run(stack, Draw("b", fault_s=8.0, failover_after_s=6.0, arbitrated=False))
    v = result.verdict
    print(f"\nwithout a witness: {v.acked} acknowledged, {v.lost_writes} acknowledged writes lost"
          f" ({len(v.lost)} blocks), two primaries in {v.overlapping_units}")  # fmt: skip
    record("partition_b_no_witness", trials=1, mode="netns", acked=v.acked, lost=v.lost_writes,
           two_primaries=v.two_primaries)  # fmt: skip
    assert v.lost_writes > 0 and v.two_primaries > 0
    assert result.figures["old_primary_last_ack_s"] > result.figures["promoted_after_s"]
