"""The step tables of the reconciler: one step per transitional status (and, for a
group, per plan kind), each failing through a transition its table allows."""

from __future__ import annotations

from typing import Any

import pytest

from openevs.contract_plans import (
    FailoverPlan,
    MembershipPlan,
    PairFlip,
    ReprotectPlan,
    SwitchoverPlan,
    dump_plan,
)
from openevs.db.models import ReplicationGroup
from openevs.domain import replication as rep
from openevs.domain.replication import GROUP_TRANSITIONAL, PAIR_TRANSITIONAL, GroupStatus, GroupTrigger
from openevs.domain.states import VOLUME_TRANSITIONAL
from openevs.reconciler import groups, replications, switchover, volumes
from openevs.reconciler.driver import Kind, StepFailed
from openevs.reconciler.groups import GROUPS
from openevs.reconciler.replications import PAIRS
from openevs.reconciler.volumes import VOLUMES

KINDS: list[tuple[Kind[Any], frozenset[str], dict[Any, Any]]] = [
    (VOLUMES, VOLUME_TRANSITIONAL, {(s, None): step for s, step in volumes.STEPS.items()}),
    (PAIRS, PAIR_TRANSITIONAL, {(s, None): step for s, step in replications.STEPS.items()}),
    (GROUPS, GROUP_TRANSITIONAL, groups.STEPS),
]


@pytest.mark.parametrize(("kind", "transitional", "steps"), KINDS, ids=lambda k: getattr(k, "model", k))
def test_every_transitional_status_has_a_step(
    kind: Kind[Any], transitional: frozenset[str], steps: Any
) -> None:
    assert kind.statuses == transitional
    assert {status for status, _ in steps} == transitional


@pytest.mark.parametrize(("kind", "transitional", "steps"), KINDS, ids=lambda k: getattr(k, "model", k))
def test_every_step_fails_through_its_table(
    kind: Kind[Any], transitional: frozenset[str], steps: Any
) -> None:
    for (status, _), step in steps.items():
        kind.machine.next(status, step.fail)  # raises InvalidState if the table has no such arrow


FLIP = PairFlip(epoch=2, link_export="link-x", new_primary="b", old_primary="a")
G, GT = GroupStatus, GroupTrigger


def group(status: GroupStatus, plan: Any) -> ReplicationGroup:
    return ReplicationGroup(id="g", status=status, pending=dump_plan(plan))


@pytest.mark.parametrize(
    ("status", "plan", "run", "fail"),
    [
        (G.CREATING, None, groups.create, GT.CREATE_FAILED),
        (G.UPDATING, MembershipPlan(add=["p"]), groups.update_members, GT.UPDATE_FAILED),
        (G.UPDATING, None, groups.update_members, GT.UPDATE_FAILED),
        # Reprotect shows as updating; its plan tells it apart, and a failure goes back to failovered.
        (G.UPDATING, ReprotectPlan(), groups.reprotect, GT.REPROTECT_FAILED),
        (G.FAILOVERING, FailoverPlan(pairs={"p": FLIP}), groups.failover, GT.FAILOVER_FAILED),
        (G.REVERSING, SwitchoverPlan(pairs={"p": FLIP}), switchover.reverse, GT.REVERSE_FAILED),
        (G.DELETING, None, groups.remove, GT.DELETE_FAILED),
    ],
)
def test_group_step_by_status_and_plan(status: GroupStatus, plan: Any, run: Any, fail: GroupTrigger) -> None:
    step = GROUPS.step_for(group(status, plan))
    assert (step.run, step.fail) == (run, fail)


def test_reprotect_failing_leaves_the_group_failovered() -> None:
    assert rep.GROUP_MACHINE.next(G.UPDATING, GT.REPROTECT_FAILED) == G.FAILOVERED


@pytest.mark.parametrize(
    ("status", "plan", "fail"),
    [
        (G.FAILOVERING, None, GT.FAILOVER_FAILED),
        (G.REVERSING, FailoverPlan(pairs={}), GT.REVERSE_FAILED),
        (G.UPDATING, SwitchoverPlan(pairs={}), GT.UPDATE_FAILED),
    ],
)
def test_a_plan_of_the_wrong_kind_fails_the_transition(
    status: GroupStatus, plan: Any, fail: GroupTrigger
) -> None:
    row = group(status, plan)
    step = GROUPS.step_for(row)
    assert step.fail == fail
    with pytest.raises(StepFailed) as info:
        step.run(None, row)  # type: ignore[arg-type]  # fails before it touches anything
    assert info.value.failure_detail == rep.FD_INTERNAL
