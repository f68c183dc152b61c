"""The switchover's per-member table: every (phase, view) cell, and how an old
primary's state is classified."""

from __future__ import annotations

import itertools

import pytest

from openevs.contract import ReplicationState
from openevs.domain.replication import ReplicationStatus, Role
from openevs.domain.switchover import (
    SWITCHOVER_MEMBER,
    Action,
    MemberView,
    Phase,
    decide_switchover_member,
    switchover_ready,
    view_of,
)

EPOCH = 7  # the epoch the switchover plan gives the old primary


def state(**fields: object) -> ReplicationState:
    base: dict[str, object] = {
        "volume_id": "v",
        "role": Role.PRIMARY,
        "epoch": EPOCH - 1,
        "mirroring": True,
        "replication_status": ReplicationStatus.ACTIVE,
        "link_up": True,
    }
    return ReplicationState.model_validate({**base, **fields})


# One state of every view.
EXAMPLES: dict[MemberView, ReplicationState] = {
    MemberView.ACTIVE: state(),
    MemberView.COPYING: state(replication_status=ReplicationStatus.COPYING),
    MemberView.SPLIT: state(replication_status=ReplicationStatus.INACTIVE, group_split=True),
    MemberView.FENCED: state(fenced=True),
    MemberView.DEMOTED_CLEAN: state(role=Role.SECONDARY, epoch=EPOCH, replication_status=None),
    MemberView.DEMOTED_DIRTY: state(
        role=Role.SECONDARY, epoch=EPOCH, replication_status=None, dirty_bytes=4096
    ),
    MemberView.OTHER: state(role=Role.STANDALONE, epoch=0, mirroring=False, replication_status=None),
}

EXPECTED = {
    (Phase.PREPARE, MemberView.ACTIVE): Action.PROCEED,
    (Phase.PREPARE, MemberView.COPYING): Action.WAIT,
    (Phase.PREPARE, MemberView.SPLIT): Action.RESUME,
    (Phase.PREPARE, MemberView.FENCED): Action.RECONFIRM,
    (Phase.PREPARE, MemberView.DEMOTED_CLEAN): Action.PROCEED,
    (Phase.PREPARE, MemberView.DEMOTED_DIRTY): Action.RESTORE,
    (Phase.PREPARE, MemberView.OTHER): Action.FAIL,
    (Phase.DEMOTED, MemberView.DEMOTED_CLEAN): Action.PROCEED,
    (Phase.DEMOTED, MemberView.DEMOTED_DIRTY): Action.RESTORE,
}


@pytest.mark.parametrize(
    ("phase", "view"), list(itertools.product(Phase, MemberView)), ids=lambda v: str(v).replace(" ", "-")
)
def test_every_cell(phase: Phase, view: MemberView) -> None:
    # Right after a demotion anything but a secondary at the plan's epoch stops the switchover.
    expected = EXPECTED.get((phase, view), Action.FAIL)
    assert SWITCHOVER_MEMBER[(phase, view)] is expected
    assert view_of(EXAMPLES[view], EPOCH) is view
    assert decide_switchover_member(phase, EXAMPLES[view], EPOCH) is expected


def test_the_table_is_complete() -> None:
    assert set(SWITCHOVER_MEMBER) == set(itertools.product(Phase, MemberView))


@pytest.mark.parametrize(
    ("fields", "view"),
    [
        ({"mirroring": False, "replication_status": ReplicationStatus.ACTIVE_STOPPED}, MemberView.FENCED),
        ({"fenced": True, "replication_status": ReplicationStatus.COPYING}, MemberView.FENCED),
        ({"replication_status": ReplicationStatus.ERROR}, MemberView.SPLIT),
        ({"replication_status": None}, MemberView.SPLIT),
        # A secondary of another epoch is not this switchover's demotion.
        ({"role": Role.SECONDARY, "epoch": EPOCH + 1, "replication_status": None}, MemberView.OTHER),
        ({"role": Role.SECONDARY, "epoch": EPOCH - 1, "replication_status": None}, MemberView.OTHER),
        # Fenced or not, a demoted disk is judged by its dirty bytes only.
        (
            {"role": Role.SECONDARY, "epoch": EPOCH, "fenced": True, "dirty_bytes": 1},
            MemberView.DEMOTED_DIRTY,
        ),
    ],
)
def test_views(fields: dict[str, object], view: MemberView) -> None:
    assert view_of(state(**fields), EPOCH) is view


def test_waiting_actions_hold_the_switchover() -> None:
    assert {a for a in Action if a.waits} == {Action.WAIT, Action.RECONFIRM, Action.RESUME, Action.RESTORE}
    assert switchover_ready([])
    assert switchover_ready([Action.PROCEED, Action.PROCEED])
    assert not switchover_ready([Action.PROCEED, Action.RESTORE])
