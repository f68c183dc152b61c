"""Drives replication consistency groups through their transitional statuses
(creating, updating, failovering, reversing, deleting) and aggregates the
measured state of their members into the group row.

Every step re-sends configurations the agents treat idempotently (same role
and epoch: no-op), and the plan of a failover or switchover (new epochs and
link secrets) was fixed in the row when the request was accepted, so a
crash at any point resumes with the same plan.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update

from openevs.contract import (
    AgentRequestFailed,
    AgentUnavailable,
    DirtyRanges,
    FailoverPlan,
    MembershipPlan,
    PairFlip,
    Peer,
    Plan,
    ReplicationRequest,
    ReprotectPlan,
    SwitchoverPlan,
    dump_plan,
    load_plan,
)
from openevs.db.cas import compare_and_set
from openevs.db.models import ReplicationGroup, ReplicationPair, Volume, utcnow
from openevs.domain import replication as rep
from openevs.domain.replication import GROUP_TRANSITIONS, GroupStatus, GroupTrigger, ReplicationStatus, Role
from openevs.domain.states import next_state
from openevs.reconciler.replications import (
    StepFailed,
    az_of,
    call,
    nbd_address,
    primary_config,
    secondary_config,
    set_role,
    state_of,
)
from openevs.runtime import Runtime
from openevs.services.connections import regrant_exports
from openevs.services.replications import new_link_export

log = logging.getLogger(__name__)


def _advance(runtime: Runtime, group: ReplicationGroup, trigger: GroupTrigger, **values: Any) -> bool:
    new = next_state(GROUP_TRANSITIONS, "replication consistency group", group.status, trigger)
    with runtime.db.session() as session:
        won = compare_and_set(session, ReplicationGroup, group.id, group.status, new, **values)
    if won:
        log.info("group %s: %s -> %s", group.id, group.status, new)
    return won


def _members(runtime: Runtime, group_id: str) -> list[ReplicationPair]:
    with runtime.db.session() as session:
        return list(session.scalars(select(ReplicationPair).where(ReplicationPair.group_id == group_id)))


def _timed_out(runtime: Runtime, group: ReplicationGroup) -> bool:
    since = group.updated_at or group.created_at
    return utcnow() - since > timedelta(seconds=runtime.settings.agent_timeout_s)


def _plan(group: ReplicationGroup) -> Plan | None:
    return load_plan(group.pending)


def _mirroring(runtime: Runtime, pair: ReplicationPair) -> bool:
    return runtime.agent(az_of(runtime, pair.production_volume_id)).get_replication(
        pair.production_volume_id
    ).mirroring


def _push_member(runtime: Runtime, pair: ReplicationPair, mirroring: bool) -> None:
    set_role(runtime, pair.dr_volume_id, secondary_config(pair, False), primary=False)
    primary = primary_config(runtime, pair, False, mirroring)
    set_role(runtime, pair.production_volume_id, primary, primary=True)


def create(runtime: Runtime, group: ReplicationGroup) -> None:
    for pair in _members(runtime, group.id):
        _push_member(runtime, pair, _mirroring(runtime, pair))
    _advance(runtime, group, GroupTrigger.CREATED, failure_detail=None, fault=None)


def update_members(runtime: Runtime, group: ReplicationGroup) -> None:
    plan = _plan(group)
    if isinstance(plan, ReprotectPlan):
        reprotect(runtime, group)
        return
    if plan is None:
        plan = MembershipPlan()
    if not isinstance(plan, MembershipPlan):
        raise StepFailed(f"group {group.id} is updating with a {plan.action} plan", rep.FD_INTERNAL)
    members = {p.id: p for p in _members(runtime, group.id)}
    for pid in plan.add:
        if pid in members:
            _push_member(runtime, members[pid], False)  # joins paused, like the group
    for pid in plan.remove:
        pair = members.get(pid)
        if pair is None:
            continue
        pair.group_id = None
        _push_member(runtime, pair, _mirroring(runtime, pair))
        with runtime.db.session() as session:
            session.execute(
                update(ReplicationPair)
                .where(ReplicationPair.id == pid)
                .values(group_id=None, updated_at=utcnow())
            )
    _advance(runtime, group, GroupTrigger.UPDATED, pending={})


def _dirty_of(runtime: Runtime, volume_id: str) -> DirtyRanges:
    az = az_of(runtime, volume_id)
    return call(runtime, az, lambda a: a.get_replication_dirty(volume_id), primary=False)


def _resume(runtime: Runtime, volume_id: str) -> None:
    call(runtime, az_of(runtime, volume_id), lambda a: a.resume_replication(volume_id), primary=True)


def reprotect(runtime: Runtime, group: ReplicationGroup) -> None:
    """Resync from the new primaries to the old ones: only the regions that differ,
    i.e. the new primary's writes since failover (its own bitmap) plus the regions
    the old primary wrote that never reached its peer (read from it here)."""
    for pair in _members(runtime, group.id):
        old_dirty = _dirty_of(runtime, pair.dr_volume_id)
        set_role(runtime, pair.dr_volume_id, secondary_config(pair, False), primary=False)
        primary = primary_config(runtime, pair, False, True).replace(add_dirty=old_dirty.ranges)
        set_role(runtime, pair.production_volume_id, primary, primary=True)
    _advance(runtime, group, GroupTrigger.REPROTECTED, pending={}, failure_detail=None)


def _promote(runtime: Runtime, pair: ReplicationPair, flip: PairFlip, mirroring: bool) -> None:
    host, port = nbd_address(runtime, az_of(runtime, flip.old_primary))
    request = ReplicationRequest(
        role=Role.PRIMARY,
        epoch=flip.epoch,
        pair_id=pair.id,
        group_id=pair.group_id,
        peer=Peer(host=host, port=port, export=flip.link_export),
        mirroring=mirroring,
    )
    set_role(runtime, flip.new_primary, request, primary=False)


def _demote(runtime: Runtime, pair: ReplicationPair, flip: PairFlip) -> None:
    request = ReplicationRequest(
        role=Role.SECONDARY,
        epoch=flip.epoch,
        pair_id=pair.id,
        group_id=pair.group_id,
        link_export=flip.link_export,
    )
    set_role(runtime, flip.old_primary, request, primary=True)


def _flips(group: ReplicationGroup) -> dict[str, PairFlip]:
    plan = _plan(group)
    if not isinstance(plan, FailoverPlan | SwitchoverPlan):
        raise StepFailed(f"group {group.id} is {group.status} without a flip plan", rep.FD_INTERNAL)
    return dict(plan.pairs)


def _commit_flip(runtime: Runtime, group: ReplicationGroup, trigger: GroupTrigger) -> None:
    """Swap the roles in the rows (priority_station moves) and end the transition."""
    plans = _flips(group)
    new_station = group.priority_station
    with runtime.db.session() as session:
        for pair_id, flip in plans.items():
            vol = session.get(Volume, flip.new_primary)
            if vol is None:
                continue
            new_station = vol.availability_zone
            session.execute(
                update(ReplicationPair)
                .where(ReplicationPair.id == pair_id, ReplicationPair.epoch < flip.epoch)
                .values(
                    production_volume_id=flip.new_primary,
                    dr_volume_id=flip.old_primary,
                    epoch=flip.epoch,
                    link_export=flip.link_export,
                    priority_station=new_station,
                    updated_at=utcnow(),
                )
            )
        new = next_state(GROUP_TRANSITIONS, "replication consistency group", group.status, trigger)
        won = compare_and_set(
            session,
            ReplicationGroup,
            group.id,
            group.status,
            new,
            pending={},
            priority_station=new_station,
            failure_detail=None,
        )
    if won:
        volume_ids = [v for flip in plans.values() for v in (flip.new_primary, flip.old_primary)]
        try:
            regrant_exports(runtime, volume_ids)
        except (AgentUnavailable, AgentRequestFailed) as exc:
            # The database holds the new access; an agent re-grants it when it returns.
            log.warning("group %s: exports not re-granted yet: %s", group.id, exc)


def failover(runtime: Runtime, group: ReplicationGroup) -> None:
    plans = _flips(group)
    pairs = {p.id: p for p in _members(runtime, group.id)}
    # Fence the old primaries first where they answer: promoting first left a window
    # in which both disks of a pair accepted user writes (found by tests/faults).
    for pair_id, plan in plans.items():
        pair = pairs.get(pair_id)
        if pair is None or pair.epoch >= plan.epoch:
            continue
        try:
            _demote(runtime, pair, plan)
        except (AgentUnavailable, StepFailed) as exc:
            # The old primary is down: it fences itself at restart until the
            # controller confirms its role, and then learns it was demoted.
            log.warning(
                "group %s: old primary of pair %s not reached (%s); fenced at its restart",
                group.id,
                pair_id,
                exc,
            )
    for pair_id, plan in plans.items():
        pair = pairs.get(pair_id)
        if pair is None or pair.epoch >= plan.epoch:
            continue
        _promote(runtime, pair, plan, mirroring=False)
    _commit_flip(runtime, group, GroupTrigger.FAILED_OVER)


def _restore(runtime: Runtime, pair: ReplicationPair, plan: PairFlip) -> PairFlip:
    """Give an interrupted switchover's old primary its primary role back, at an epoch
    above the plan's, resyncing to its peer; returns the pair's new plan."""
    epoch = plan.epoch + 1
    link = new_link_export()
    # Reuse the flip helpers with the roles swapped: the DR disk stays secondary.
    back = PairFlip(epoch=epoch, link_export=link, new_primary=plan.old_primary, old_primary=plan.new_primary)
    _demote(runtime, pair, back)
    _promote(runtime, pair, back, mirroring=True)
    with runtime.db.session() as session:
        session.execute(
            update(ReplicationPair)
            .where(ReplicationPair.id == pair.id)
            .values(epoch=epoch, link_export=link, updated_at=utcnow())
        )
    return plan.replace(epoch=epoch + 1, link_export=new_link_export())


def _save_plans(runtime: Runtime, group: ReplicationGroup, plans: dict[str, PairFlip]) -> None:
    with runtime.db.session() as session:
        session.execute(
            update(ReplicationGroup)
            .where(ReplicationGroup.id == group.id, ReplicationGroup.status == group.status)
            .values(pending=dump_plan(SwitchoverPlan(pairs=plans)))
        )


def reverse(runtime: Runtime, group: ReplicationGroup) -> None:
    """Switchover: wait until every old primary is an active primary (re-confirming one
    that restarted), demote them all (in-flight writes drain), check that none holds a
    write its peer lacks, then promote the DR disks and flip the rows. An old primary
    found holding unsynced writes gets its role back at a higher epoch and resyncs;
    the switchover then waits for it, until agent_timeout_s."""
    plans = _flips(group)
    pairs = {p.id: p for p in _members(runtime, group.id)}
    todo = [(pairs[p], plan) for p, plan in plans.items() if p in pairs and pairs[p].epoch < plan.epoch]
    waiting = False
    for pair, plan in todo:
        old = plan.old_primary
        state = state_of(runtime, old, primary=True)
        if state.role is Role.SECONDARY and state.epoch == plan.epoch:
            if state.dirty_bytes > 0:  # demoted by an interrupted pass
                plans[pair.id] = _restore(runtime, pair, plan)
                waiting = True
            continue
        if state.role is not Role.PRIMARY:
            raise StepFailed(f"disk {old} is {state.role}, not the primary", rep.FD_INTERNAL)
        if state.fenced or not state.mirroring:
            set_role(runtime, old, primary_config(runtime, pair, False, True), primary=True)
            waiting = True
        elif state.replication_status is not ReplicationStatus.ACTIVE:
            log.info(
                "switchover of pair %s waits: %s",
                pair.id,
                state.model_dump(include={"replication_status", "link_up", "group_split", "dirty_bytes"}),
            )
            if state.replication_status is not ReplicationStatus.COPYING:
                # Split (e.g. by a member demoted in an interrupted pass): rejoin and resync.
                _resume(runtime, old)
            waiting = True
    if not waiting:
        for pair, plan in todo:
            _demote(runtime, pair, plan)  # drains in-flight writes, then refuses new ones
            state = state_of(runtime, plan.old_primary, primary=True)
            if state.dirty_bytes > 0:
                plans[pair.id] = _restore(runtime, pair, plan)
                waiting = True
    if waiting:
        log.info("group %s: switchover waits for its primaries to be in sync", group.id)
        _save_plans(runtime, group, plans)
        if _timed_out(runtime, group):
            raise StepFailed("the primaries did not get in sync for the switchover in time", rep.FD_LINK)
        return
    for pair, plan in todo:
        _promote(runtime, pair, plan, mirroring=True)
    _commit_flip(runtime, group, GroupTrigger.REVERSED)


def remove(runtime: Runtime, group: ReplicationGroup) -> None:
    with runtime.db.session() as session:
        session.execute(
            delete(ReplicationGroup).where(
                ReplicationGroup.id == group.id, ReplicationGroup.status == GroupStatus.DELETING
            )
        )


STEPS = {
    GroupStatus.CREATING: (create, GroupTrigger.CREATE_FAILED),
    GroupStatus.UPDATING: (update_members, GroupTrigger.UPDATE_FAILED),
    GroupStatus.FAILOVERING: (failover, GroupTrigger.FAILOVER_FAILED),
    GroupStatus.REVERSING: (reverse, GroupTrigger.REVERSE_FAILED),
    GroupStatus.DELETING: (remove, GroupTrigger.DELETE_FAILED),
}


def _fail(runtime: Runtime, group: ReplicationGroup, default: GroupTrigger, detail: str, fault: str) -> None:
    trigger = default
    if group.status == GroupStatus.UPDATING and isinstance(_plan(group), ReprotectPlan):
        trigger = GroupTrigger.REPROTECT_FAILED
    _advance(runtime, group, trigger, failure_detail=detail, fault=fault[:1024])


def aggregate(runtime: Runtime) -> None:
    """Group replication_status, progress and fault_level from the members' measurements."""
    with runtime.db.session() as session:
        groups = list(session.scalars(select(ReplicationGroup)))
        pairs = list(session.scalars(select(ReplicationPair).where(ReplicationPair.group_id.is_not(None))))
    by_group: dict[str, list[ReplicationPair]] = {}
    for p in pairs:
        by_group.setdefault(p.group_id or "", []).append(p)
    for group in groups:
        members = by_group.get(group.id, [])
        statuses = {p.replication_status for p in members}
        if not members:
            status = None
        else:
            order = [
                ReplicationStatus.ERROR,
                ReplicationStatus.COPYING,
                ReplicationStatus.INACTIVE,
                ReplicationStatus.ACTIVE_STOPPED,
                ReplicationStatus.ACTIVE,
            ]
            status = next((s.value for s in order if s in statuses), None)
        faults = {p.fault_level for p in members}
        fault = (
            rep.FAULT_PRODUCTION
            if rep.FAULT_PRODUCTION in faults
            else (rep.FAULT_LINK if rep.FAULT_LINK in faults else rep.FAULT_NONE)
        )
        progress = None
        if status == ReplicationStatus.COPYING:
            values = [int(p.progress or 0) for p in members]
            progress = str(sum(values) // len(values))
        elif status == ReplicationStatus.ACTIVE:
            progress = "100"
        if (group.replication_status, group.fault_level, group.progress) != (status, fault, progress):
            with runtime.db.session() as session:
                session.execute(
                    update(ReplicationGroup)
                    .where(ReplicationGroup.id == group.id)
                    .values(
                        replication_status=status, fault_level=fault, progress=progress, updated_at=utcnow()
                    )
                )


def step(runtime: Runtime) -> int:
    with runtime.db.session() as session:
        busy = list(session.scalars(select(ReplicationGroup).where(ReplicationGroup.status.in_(list(STEPS)))))
    for group in busy:
        fn, failed = STEPS[GroupStatus(group.status)]
        try:
            fn(runtime, group)
        except AgentUnavailable as exc:
            if _timed_out(runtime, group):
                _fail(runtime, group, failed, rep.FD_LINK, str(exc))
        except StepFailed as exc:
            _fail(runtime, group, failed, exc.failure_detail, str(exc))
        except AgentRequestFailed as exc:
            _fail(runtime, group, failed, rep.FD_INTERNAL, str(exc))
        except Exception:
            log.exception("group %s: reconcile step failed", group.id)
    return len(busy)
