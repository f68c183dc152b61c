"""The partition matrix with the real controller (`openevs serve` with OPENEVS_WITNESS):
failover through the API and automatic failover, the controller isolated, and the
controller SIGKILLed at a random moment (controlled.py, scenarios.py, checker.py)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.faults.controlled import FAILOVER, ControlledStack
from tests.faults.harness import group_action
from tests.faults.partitions import open_stack
from tests.faults.scenarios import Draw, run
from tests.faults.test_partitions import _passes

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.fixture(scope="module", params=["manual", pytest.param("auto", marks=pytest.mark.long)])
def stack(request: pytest.FixtureRequest) -> Iterator[ControlledStack]:
    auto = request.param == "auto"
    for s in open_stack(lambda root: ControlledStack(root, auto_failover=auto, auto_failover_after_s=2.0),
                        "oevs-ctl-"):  # fmt: skip
        assert isinstance(s, ControlledStack)
        yield s


def _draw(stack: ControlledStack, scenario: str, **kw: object) -> Draw:
    mode = "auto" if stack.auto_failover else "manual"
    return Draw(scenario, suspend_timeout_s=stack.suspend_timeout_s, controller=mode, **kw)  # type: ignore[arg-type]


def test_primary_az_isolated_fails_over_with_the_witness(stack: ControlledStack) -> None:
    """(b) through the API (or by itself, automatic failover on): the isolated old
    primary stopped acknowledging before the DR side was promoted; nothing lost."""
    result = _passes(run(stack, _draw(stack, "b", fault_s=10.0, failover_after_s=6.0)))
    assert result.figures["old_primary_last_ack_s"] < result.figures["promoted_after_s"]


def test_controller_isolated_while_the_link_is_cut(stack: ControlledStack) -> None:
    if stack.auto_failover:
        pytest.skip("the same with automatic failover on adds nothing: the primary is not lost")
    _passes(run(stack, _draw(stack, "e", fault_s=7.0)))


@pytest.mark.long
def test_controller_killed_at_a_random_moment(stack: ControlledStack) -> None:
    seed = int(os.environ.get("OPENEVS_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    d = _draw(stack, rng.choice("abe"), fault_s=8.0, failover_after_s=6.0, seed=seed, kill="h")
    d.kill_at_s = round(rng.uniform(0.0, d.fault_s), 1)
    d.restart_after_s = round(rng.uniform(0.3, 2.0), 1)
    print(f"\nseed {seed} (OPENEVS_FAULT_SEED={seed} replays it): {d}")
    _passes(run(stack, d))


def test_failover_with_the_witness_unreachable_is_refused(stack: ControlledStack) -> None:
    if stack.auto_failover:
        pytest.skip("the operator's request only")
    stack.ensure_up()
    trial = stack.trial().setup(record=False)
    try:
        stack.net.isolate("a")
        stack.net.isolate("w")
        r = stack.session.post(f"/v2/{{p}}/os-vendor-replication-consistency-groups/{trial.group}/action",
                               {FAILOVER: None})  # fmt: skip
        print(f"\nfailover with the witness unreachable: {r.status_code} {r.text}")
        assert r.status_code == 400 and "witness" in r.text, r.text
        stack.net.heal()
        trial.wait_active("a")
        assert group_action(stack.session, trial.group, FAILOVER) == 200  # reachable again: allowed
    finally:
        stack.net.heal()
