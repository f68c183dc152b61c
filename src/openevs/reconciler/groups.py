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

from openevs.agent.interface import AgentRequestFailed, AgentUnavailable
from openevs.db.cas import compare_and_set
from openevs.db.models import ReplicationGroup, ReplicationPair, Volume, utcnow
from openevs.domain import replication as rep
from openevs.domain.replication import GROUP_TRANSITIONS, GroupStatus, GroupTrigger, ReplicationStatus
from openevs.domain.states import next_state
from openevs.reconciler.replications import (
    StepFailed,
    _call,
    az_of,
    nbd_address,
    primary_config,
    secondary_config,
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


def _mirroring(runtime: Runtime, pair: ReplicationPair) -> bool:
    state = runtime.agent(az_of(runtime, pair.production_volume_id)).get_replication(
        pair.production_volume_id
    )
    return bool(state.get("mirroring", True))


def _push_member(runtime: Runtime, pair: ReplicationPair, mirroring: bool) -> None:
    _call(
        runtime,
        az_of(runtime, pair.dr_volume_id),
        "set_replication",
        pair.dr_volume_id,
        secondary_config(pair, False),
        primary=False,
    )
    _call(
        runtime,
        az_of(runtime, pair.production_volume_id),
        "set_replication",
        pair.production_volume_id,
        primary_config(runtime, pair, False, mirroring),
        primary=True,
    )


def create(runtime: Runtime, group: ReplicationGroup) -> None:
    for pair in _members(runtime, group.id):
        _push_member(runtime, pair, _mirroring(runtime, pair))
    _advance(runtime, group, GroupTrigger.CREATED, failure_detail=None, fault=None)


def update_members(runtime: Runtime, group: ReplicationGroup) -> None:
    pending = group.pending or {}
    if pending.get("action") == "reprotect":
        reprotect(runtime, group)
        return
    members = {p.id: p for p in _members(runtime, group.id)}
    for pid in pending.get("add", []):
        if pid in members:
            _push_member(runtime, members[pid], False)  # joins paused, like the group
    for pid in pending.get("remove", []):
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


def reprotect(runtime: Runtime, group: ReplicationGroup) -> None:
    """Resync from the new primaries to the old ones: only the regions that differ,
    i.e. the new primary's writes since failover (its own bitmap) plus the regions
    the old primary wrote that never reached its peer (read from it here)."""
    for pair in _members(runtime, group.id):
        old_az = az_of(runtime, pair.dr_volume_id)
        old_dirty = _call(runtime, old_az, "get_replication_dirty", pair.dr_volume_id, primary=False)
        config = secondary_config(pair, False)
        _call(runtime, old_az, "set_replication", pair.dr_volume_id, config, primary=False)
        primary = primary_config(runtime, pair, False, True)
        primary["add_dirty"] = old_dirty
        _call(
            runtime,
            az_of(runtime, pair.production_volume_id),
            "set_replication",
            pair.production_volume_id,
            primary,
            primary=True,
        )
    _advance(runtime, group, GroupTrigger.REPROTECTED, pending={}, failure_detail=None)


def _promote(runtime: Runtime, pair: ReplicationPair, plan: dict[str, Any], mirroring: bool) -> None:
    new_primary, old_primary = plan["new_primary"], plan["old_primary"]
    host, port = nbd_address(runtime, az_of(runtime, old_primary))
    config = {
        "role": "primary",
        "epoch": plan["epoch"],
        "pair_id": pair.id,
        "group_id": pair.group_id,
        "peer": {"host": host, "port": port, "export": plan["link_export"]},
        "link_export": None,
        "mirroring": mirroring,
        "initial_sync": False,
    }
    _call(runtime, az_of(runtime, new_primary), "set_replication", new_primary, config, primary=False)


def _demote(runtime: Runtime, pair: ReplicationPair, plan: dict[str, Any]) -> None:
    config = {
        "role": "secondary",
        "epoch": plan["epoch"],
        "pair_id": pair.id,
        "group_id": pair.group_id,
        "peer": None,
        "link_export": plan["link_export"],
        "mirroring": True,
        "initial_sync": False,
    }
    _call(
        runtime,
        az_of(runtime, plan["old_primary"]),
        "set_replication",
        plan["old_primary"],
        config,
        primary=True,
    )


def _commit_flip(runtime: Runtime, group: ReplicationGroup, trigger: GroupTrigger) -> None:
    """Swap the roles in the rows (priority_station moves) and end the transition."""
    plans: dict[str, dict[str, Any]] = group.pending.get("pairs", {})
    new_station = group.priority_station
    with runtime.db.session() as session:
        for pair_id, plan in plans.items():
            vol = session.get(Volume, plan["new_primary"])
            if vol is None:
                continue
            new_station = vol.availability_zone
            session.execute(
                update(ReplicationPair)
                .where(ReplicationPair.id == pair_id, ReplicationPair.epoch < plan["epoch"])
                .values(
                    production_volume_id=plan["new_primary"],
                    dr_volume_id=plan["old_primary"],
                    epoch=plan["epoch"],
                    link_export=plan["link_export"],
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
        volume_ids = [v for plan in plans.values() for v in (plan["new_primary"], plan["old_primary"])]
        try:
            regrant_exports(runtime, volume_ids)
        except (AgentUnavailable, AgentRequestFailed) as exc:
            # The database holds the new access; an agent re-grants it when it returns.
            log.warning("group %s: exports not re-granted yet: %s", group.id, exc)


def failover(runtime: Runtime, group: ReplicationGroup) -> None:
    plans: dict[str, dict[str, Any]] = group.pending.get("pairs", {})
    pairs = {p.id: p for p in _members(runtime, group.id)}
    # Fence the old primaries first where they answer: promoting first left a window
    # in which both disks of a pair accepted user writes (found by tests/faults).
    for pair_id, plan in plans.items():
        pair = pairs.get(pair_id)
        if pair is None or pair.epoch >= plan["epoch"]:
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
        if pair is None or pair.epoch >= plan["epoch"]:
            continue
        _promote(runtime, pair, plan, mirroring=False)
    _commit_flip(runtime, group, GroupTrigger.FAILED_OVER)


def _restore(runtime: Runtime, pair: ReplicationPair, plan: dict[str, Any]) -> dict[str, Any]:
    """Give an interrupted switchover's old primary its primary role back, at an epoch
    above the plan's, resyncing to its peer; returns the pair's new plan."""
    epoch = int(plan["epoch"]) + 1
    link = new_link_export()
    restored = {**plan, "epoch": epoch, "link_export": link}
    # Reuse the flip helpers with the roles swapped: the DR disk stays secondary.
    back = {**restored, "new_primary": plan["old_primary"], "old_primary": plan["new_primary"]}
    _demote(runtime, pair, back)
    _promote(runtime, pair, back, mirroring=True)
    with runtime.db.session() as session:
        session.execute(
            update(ReplicationPair)
            .where(ReplicationPair.id == pair.id)
            .values(epoch=epoch, link_export=link, updated_at=utcnow())
        )
    return {**plan, "epoch": epoch + 1, "link_export": new_link_export()}


def _save_plans(runtime: Runtime, group: ReplicationGroup, plans: dict[str, dict[str, Any]]) -> None:
    with runtime.db.session() as session:
        session.execute(
            update(ReplicationGroup)
            .where(ReplicationGroup.id == group.id, ReplicationGroup.status == group.status)
            .values(pending={**group.pending, "pairs": plans})
        )


def reverse(runtime: Runtime, group: ReplicationGroup) -> None:
    """Switchover: wait until every old primary is an active primary (re-confirming one
    that restarted), demote them all (in-flight writes drain), check that none holds a
    write its peer lacks, then promote the DR disks and flip the rows. An old primary
    found holding unsynced writes gets its role back at a higher epoch and resyncs;
    the switchover then waits for it, until agent_timeout_s."""
    plans: dict[str, dict[str, Any]] = dict(group.pending.get("pairs", {}))
    pairs = {p.id: p for p in _members(runtime, group.id)}
    todo = [
        (pairs[pid], plan) for pid, plan in plans.items() if pid in pairs and pairs[pid].epoch < plan["epoch"]
    ]
    waiting = False
    for pair, plan in todo:
        old = plan["old_primary"]
        state = _call(runtime, az_of(runtime, old), "get_replication", old, primary=True)
        if state.get("role") == "secondary" and int(state.get("epoch", 0)) == plan["epoch"]:
            if int(state.get("dirty_bytes", 0)) > 0:  # demoted by an interrupted pass
                plans[pair.id] = _restore(runtime, pair, plan)
                waiting = True
            continue
        if state.get("role") != "primary":
            raise StepFailed(f"disk {old} is {state.get('role')}, not the primary", rep.FD_INTERNAL)
        if state.get("fenced") or not state.get("mirroring"):
            config = primary_config(runtime, pair, False, True)
            _call(runtime, az_of(runtime, old), "set_replication", old, config, primary=True)
            waiting = True
        elif state.get("replication_status") != ReplicationStatus.ACTIVE:
            log.info(
                "switchover of pair %s waits: %s",
                pair.id,
                {k: state.get(k) for k in ("replication_status", "link_up", "group_split", "dirty_bytes")},
            )
            if state.get("replication_status") != ReplicationStatus.COPYING:
                # Split (e.g. by a member demoted in an interrupted pass): rejoin and resync.
                _call(runtime, az_of(runtime, old), "resume_replication", old, primary=True)
            waiting = True
    if not waiting:
        for pair, plan in todo:
            _demote(runtime, pair, plan)  # drains in-flight writes, then refuses new ones
            state = _call(
                runtime,
                az_of(runtime, plan["old_primary"]),
                "get_replication",
                plan["old_primary"],
                primary=True,
            )
            if int(state.get("dirty_bytes", 0)) > 0:
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
    if group.status == GroupStatus.UPDATING and (group.pending or {}).get("action") == "reprotect":
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
