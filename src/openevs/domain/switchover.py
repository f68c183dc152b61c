"""The switchover's per-member decisions (os-reverse), as a table.

A switchover flips the roles of every member of a group with no write lost:
it waits until every old primary is an active primary, demotes them all
(in-flight writes drain, new ones are refused), checks that none holds a
write its peer lacks, and only then promotes the DR disks. Each pass of the
reconciler reads every old primary's state, classifies it (`view_of`) and
looks up what to do with it in `SWITCHOVER_MEMBER`; the reconciler only
carries the action out. Nothing here does I/O.

Rules this table keeps:

- nothing is demoted until every member is an active primary (phase
  `prepare`); a fenced or paused one is re-confirmed, a split one rejoins,
  a copying one is waited for;
- a member found demoted and holding writes its peer lacks (an interrupted
  pass, or writes that landed during the demotion) gets its primary role
  back at a higher epoch and resyncs: the switchover then waits for it;
- a member in any other role stops the switchover (error_reversing), as
  does anything but a clean secondary right after its demotion.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Protocol

from openevs.domain.replication import ReplicationStatus, Role


class Phase(StrEnum):
    PREPARE = "prepare"  # before any demotion: every old primary must be an active primary
    DEMOTED = "demoted"  # right after demoting one: it must hold nothing its peer lacks


class MemberView(StrEnum):
    """What an old primary's agent reports, as far as the switchover cares."""

    ACTIVE = "active primary"
    COPYING = "copying primary"
    SPLIT = "split primary"  # mirroring, but neither active nor copying
    FENCED = "fenced or paused primary"
    DEMOTED_CLEAN = "demoted, in sync"
    DEMOTED_DIRTY = "demoted, holding unsynced writes"
    OTHER = "not the primary"


class Action(StrEnum):
    PROCEED = "proceed"
    WAIT = "wait"
    RECONFIRM = "reconfirm"  # re-send its primary role, mirroring on
    RESUME = "resume"  # rejoin the group's mirroring and resync
    RESTORE = "restore"  # its primary role back at a higher epoch
    FAIL = "fail"

    @property
    def waits(self) -> bool:
        """The switchover cannot go on in this pass."""
        return self in (Action.WAIT, Action.RECONFIRM, Action.RESUME, Action.RESTORE)


PH, MV, A = Phase, MemberView, Action

SWITCHOVER_MEMBER: dict[tuple[Phase, MemberView], Action] = {
    (PH.PREPARE, MV.ACTIVE): A.PROCEED,
    (PH.PREPARE, MV.COPYING): A.WAIT,
    (PH.PREPARE, MV.SPLIT): A.RESUME,
    (PH.PREPARE, MV.FENCED): A.RECONFIRM,
    (PH.PREPARE, MV.DEMOTED_CLEAN): A.PROCEED,
    (PH.PREPARE, MV.DEMOTED_DIRTY): A.RESTORE,
    (PH.PREPARE, MV.OTHER): A.FAIL,
    (PH.DEMOTED, MV.ACTIVE): A.FAIL,
    (PH.DEMOTED, MV.COPYING): A.FAIL,
    (PH.DEMOTED, MV.SPLIT): A.FAIL,
    (PH.DEMOTED, MV.FENCED): A.FAIL,
    (PH.DEMOTED, MV.DEMOTED_CLEAN): A.PROCEED,
    (PH.DEMOTED, MV.DEMOTED_DIRTY): A.RESTORE,
    (PH.DEMOTED, MV.OTHER): A.FAIL,
}


class MemberState(Protocol):
    """An old primary's state (`contract.ReplicationState` is one)."""

    @property
    def role(self) -> Role: ...

    @property
    def epoch(self) -> int: ...

    @property
    def dirty_bytes(self) -> int: ...

    @property
    def fenced(self) -> bool: ...

    @property
    def mirroring(self) -> bool: ...

    @property
    def replication_status(self) -> ReplicationStatus | None: ...


def view_of(state: MemberState, plan_epoch: int) -> MemberView:
    """Classify an old primary whose switchover plan gives it `plan_epoch`."""
    if state.role is Role.SECONDARY and state.epoch == plan_epoch:
        return MV.DEMOTED_DIRTY if state.dirty_bytes > 0 else MV.DEMOTED_CLEAN
    if state.role is not Role.PRIMARY:
        return MV.OTHER
    if state.fenced or not state.mirroring:
        return MV.FENCED
    if state.replication_status is ReplicationStatus.ACTIVE:
        return MV.ACTIVE
    if state.replication_status is ReplicationStatus.COPYING:
        return MV.COPYING
    return MV.SPLIT


def decide_switchover_member(phase: Phase, state: MemberState, plan_epoch: int) -> Action:
    return SWITCHOVER_MEMBER[(phase, view_of(state, plan_epoch))]


def switchover_ready(actions: Iterable[Action]) -> bool:
    """Every member can go on to the next phase in this pass."""
    return not any(a.waits for a in actions)
