"""Carries out a consistency group's switchover (os-reverse), pass by pass.

The decisions are `domain/switchover.py`'s table: this module reads every
old primary's state, looks up the action for it, and does it. When any
member waits, the pass saves the (possibly updated) plan and ends; the
switchover fails (error_reversing, FD_LINK) once it has waited
`agent_timeout_s`.
"""

from __future__ import annotations

import logging

from sqlalchemy import update

from openevs.contract_plans import PairFlip, SwitchoverPlan, dump_plan
from openevs.db.models import ReplicationGroup, ReplicationPair, utcnow
from openevs.domain import replication as rep
from openevs.domain.replication import GroupTrigger
from openevs.domain.switchover import Action, Phase, decide_switchover_member, switchover_ready, view_of
from openevs.reconciler.driver import StepFailed, timed_out
from openevs.reconciler.flips import (
    commit_flip,
    demote,
    flips,
    group_epoch_after,
    promote,
    promote_all,
    to_flip,
)
from openevs.reconciler.roles import primary_config, resume, set_role, state_of, unit_epoch_of
from openevs.runtime import Runtime
from openevs.services.replications import new_link_export

log = logging.getLogger(__name__)


def restore(runtime: Runtime, pair: ReplicationPair, flip: PairFlip) -> PairFlip:
    """Give an interrupted switchover's old primary its primary role back, at an epoch
    above the plan's, resyncing to its peer; returns the pair's new plan."""
    epoch = flip.epoch + 1
    link = new_link_export(runtime.sealer)
    # The flip helpers with the roles swapped: the DR disk stays secondary.
    back = PairFlip(epoch=epoch, link_export=link, new_primary=flip.old_primary, old_primary=flip.new_primary)
    demote(runtime, pair, back)
    promote(runtime, pair, back, mirroring=True, unit_epoch=unit_epoch_of(runtime, pair))
    with runtime.db.session() as session:
        session.execute(
            update(ReplicationPair)
            .where(ReplicationPair.id == pair.id)
            .values(epoch=epoch, link_export=link, updated_at=utcnow())
        )
    return flip.replace(epoch=epoch + 1, link_export=new_link_export(runtime.sealer))


def _carry_out(
    runtime: Runtime, action: Action, pair: ReplicationPair, flip: PairFlip, plans: dict[str, PairFlip]
) -> None:
    old = flip.old_primary
    if action is Action.RECONFIRM:
        set_role(runtime, old, primary_config(runtime, pair, False, True), primary=True)
    elif action is Action.RESUME:
        resume(runtime, old)
    elif action is Action.RESTORE:
        plans[pair.id] = restore(runtime, pair, flip)


def _decide(runtime: Runtime, phase: Phase, pair: ReplicationPair, flip: PairFlip) -> Action:
    state = state_of(runtime, flip.old_primary, primary=True)
    action = decide_switchover_member(phase, state, flip.epoch)
    if action is Action.FAIL:
        view = view_of(state, flip.epoch)
        message = f"disk {flip.old_primary} is {view} ({phase}), not one to switch over"
        raise StepFailed(message, rep.FD_INTERNAL)
    if action.waits:
        log.info(
            "switchover of pair %s waits (%s): %s",
            pair.id,
            action,
            state.model_dump(include={"role", "replication_status", "link_up", "group_split", "dirty_bytes"}),
        )
    return action


def _save_plans(runtime: Runtime, group: ReplicationGroup, plans: dict[str, PairFlip]) -> None:
    with runtime.db.session() as session:
        session.execute(
            update(ReplicationGroup)
            .where(ReplicationGroup.id == group.id, ReplicationGroup.status == group.status)
            .values(pending=dump_plan(SwitchoverPlan(pairs=plans)))
        )


def reverse(runtime: Runtime, group: ReplicationGroup) -> None:
    """One pass of the switchover: prepare every old primary; when all are active
    primaries, demote them all and check each holds nothing its peer lacks; when
    none does, promote the DR disks and flip the rows."""
    plans = flips(group)
    todo = to_flip(runtime, group.id, plans)
    actions = []
    for pair, flip in todo:
        action = _decide(runtime, Phase.PREPARE, pair, flip)
        _carry_out(runtime, action, pair, flip, plans)
        actions.append(action)
    if switchover_ready(actions):
        for pair, flip in todo:
            demote(runtime, pair, flip)  # drains in-flight writes, then refuses new ones
            action = _decide(runtime, Phase.DEMOTED, pair, flip)
            _carry_out(runtime, action, pair, flip, plans)
            actions.append(action)
    if not switchover_ready(actions):
        log.info("group %s: switchover waits for its primaries to be in sync", group.id)
        _save_plans(runtime, group, plans)
        if timed_out(runtime, group):
            raise StepFailed("the primaries did not get in sync for the switchover in time", rep.FD_LINK)
        return
    promote_all(runtime, todo, mirroring=True, unit_epoch=group_epoch_after(group))
    commit_flip(runtime, group, GroupTrigger.REVERSED)
