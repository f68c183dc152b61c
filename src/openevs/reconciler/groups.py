"""Drives replication consistency groups through their transitional statuses
(creating, updating, failovering, reversing, deleting) and aggregates the
measured state of their members into the group row.

Which step a group takes is `STEPS`, keyed by its status and the kind of
the plan in its row: reprotect shows as `updating` (EVS has no reprotecting
status) and is told apart by its ReprotectPlan. Every step re-sends
configurations the agents treat idempotently (same role and epoch: no-op),
and the plan of a failover or switchover (new epochs and link secrets) was
fixed in the row when the request was accepted, so a crash at any point
resumes with the same plan.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import or_, select, update

from openevs.contract import AgentRequestFailed, AgentUnavailable
from openevs.contract_plans import FailoverPlan, MembershipPlan, PairFlip, ReprotectPlan, SwitchoverPlan
from openevs.db.cas import delete_in_status
from openevs.db.models import ReplicationGroup, ReplicationPair, utcnow
from openevs.domain import replication as rep
from openevs.domain.arbitration import arbiter_key
from openevs.domain.errors import Conflict
from openevs.domain.measurement import aggregate_group
from openevs.domain.replication import GROUP_MACHINE, GroupStatus, GroupTrigger
from openevs.reconciler.driver import Kind, Step, StepFailed
from openevs.reconciler.flips import (
    PhaseClock,
    Places,
    commit_flip,
    demote,
    demote_request,
    flips,
    group_epoch_after,
    members,
    plan_of,
    promote_all,
    to_flip,
)
from openevs.reconciler.roles import (
    configure_pair,
    dirty_of,
    primary_config,
    secondary_config,
    set_role,
    state_of,
)
from openevs.reconciler.switchover import reverse
from openevs.runtime import Runtime
from openevs.services import arbitration

log = logging.getLogger(__name__)

G, GT = GroupStatus, GroupTrigger


def _mirroring(runtime: Runtime, pair: ReplicationPair) -> bool:
    return state_of(runtime, pair.production_volume_id, primary=True).mirroring


def create(runtime: Runtime, group: ReplicationGroup) -> None:
    for pair in members(runtime, group.id):
        configure_pair(runtime, pair, False, _mirroring(runtime, pair))
    GROUPS.advance(runtime, group, GT.CREATED, failure_detail=None, fault=None)


def update_members(runtime: Runtime, group: ReplicationGroup) -> None:
    plan = plan_of(group)
    if not isinstance(plan, MembershipPlan):
        plan = MembershipPlan()  # no plan: nothing to add or remove
    pairs = {p.id: p for p in members(runtime, group.id)}
    for pid in plan.add:
        if pid in pairs:
            configure_pair(runtime, pairs[pid], False, False)  # joins paused, like the group
    for pid in plan.remove:
        pair = pairs.get(pid)
        if pair is None:
            continue
        pair.group_id = None
        configure_pair(runtime, pair, False, _mirroring(runtime, pair))
        with runtime.db.session() as session:
            session.execute(
                update(ReplicationPair)
                .where(ReplicationPair.id == pid)
                .values(group_id=None, updated_at=utcnow())
            )
    GROUPS.advance(runtime, group, GT.UPDATED, pending={})


def reprotect(runtime: Runtime, group: ReplicationGroup) -> None:
    """Resync from the new primaries to the old ones: only the regions that differ,
    i.e. the new primary's writes since failover (its own bitmap) plus the regions
    the old primary wrote that never reached its peer (read from it here)."""
    for pair in members(runtime, group.id):
        old_dirty = dirty_of(runtime, pair.dr_volume_id)
        set_role(runtime, pair.dr_volume_id, secondary_config(runtime, pair, False), primary=False)
        primary = primary_config(runtime, pair, False, True).replace(add_dirty=old_dirty.ranges)
        set_role(runtime, pair.production_volume_id, primary, primary=True)
    GROUPS.advance(runtime, group, GT.REPROTECTED, pending={}, failure_detail=None)


def failover(runtime: Runtime, group: ReplicationGroup) -> None:
    clock = PhaseClock()
    todo = to_flip(runtime, group.id, flips(group))
    where = Places.read(runtime, todo)
    clock.lap("read")
    # Fence the old primaries first where they answer: promoting first left a window
    # in which both disks of a pair accepted user writes (found by tests/faults).
    _demote_old_primaries(runtime, group, todo, where)
    clock.lap("demote")
    epoch = group_epoch_after(group)
    arbitrated = _witness_grants(runtime, group, todo, epoch, where)
    clock.lap("witness")
    promote_all(runtime, todo, mirroring=False, unit_epoch=epoch, arbitrated=arbitrated, where=where)
    clock.lap("promote")
    commit_flip(runtime, group, GT.FAILED_OVER, clock)
    log.info("group %s: failover step of %d members: %s", group.id, len(todo), clock)


def _demote_old_primaries(
    runtime: Runtime, group: ReplicationGroup, todo: list[tuple[ReplicationPair, PairFlip]], where: Places
) -> None:
    """One batched call per old primaries' agent; where it refuses, member by member,
    so that one refusal does not keep the others from being fenced."""
    by_az: dict[str, list[tuple[ReplicationPair, PairFlip]]] = {}
    for pair, flip in todo:
        by_az.setdefault(where.az_of(flip.old_primary), []).append((pair, flip))
    for az, members_of_az in by_az.items():
        configs = [(flip.old_primary, demote_request(runtime, pair, flip)) for pair, flip in members_of_az]
        try:
            runtime.agent(az).set_replication_batch(configs)
            continue
        except AgentUnavailable as exc:
            # The old primary is down: it fences itself at restart until the
            # controller confirms its role, and then learns it was demoted.
            log.warning(
                "group %s: old primaries in %s not reached (%s); fenced at their restart", group.id, az, exc
            )
            continue
        except AgentRequestFailed:
            pass
        for pair, flip in members_of_az:
            try:
                demote(runtime, pair, flip)
            except (AgentUnavailable, StepFailed) as exc:
                log.warning(
                    "group %s: old primary of pair %s not reached (%s); fenced at its restart",
                    group.id,
                    pair.id,
                    exc,
                )


def _witness_grants(
    runtime: Runtime,
    group: ReplicationGroup,
    todo: list[tuple[ReplicationPair, PairFlip]],
    epoch: int,
    where: Places,
) -> bool:
    """The witness's grant of the group to the DR side, before anything is promoted
    (services/arbitration.py); False: promote without an arbiter (static priority)."""
    if not todo:
        return True
    plan = plan_of(group)
    force = isinstance(plan, FailoverPlan) and plan.force
    dr_az = where.az_of(todo[0][1].new_primary)
    witness = arbitration.witness_of(runtime, group.priority_station, dr_az)
    if witness is None:
        return True  # static priority: promote_config carries no arbiter either
    try:
        key = arbiter_key(group.id, group.id)
        return arbitration.secure_failover(
            witness, key, epoch, dr_az, force=force, tls=runtime.settings.control_tls_files()
        )
    except Conflict as exc:
        raise StepFailed(str(exc), rep.FD_INTERNAL) from exc


def remove(runtime: Runtime, group: ReplicationGroup) -> None:
    with runtime.db.session() as session:
        won = delete_in_status(session, ReplicationGroup, group.id, GroupStatus.DELETING)
    if won:
        log.info("group %s deleted", group.id)
    else:
        log.info("group %s: deleted meanwhile; left to whoever deleted it", group.id)


PlanKind = type[MembershipPlan] | type[ReprotectPlan] | type[FailoverPlan] | type[SwitchoverPlan] | None

# (status, kind of the row's plan) -> the step and the trigger that fails it.
STEPS: dict[tuple[GroupStatus, PlanKind], Step[ReplicationGroup]] = {
    (G.CREATING, None): Step(create, GT.CREATE_FAILED),
    (G.UPDATING, MembershipPlan): Step(update_members, GT.UPDATE_FAILED),
    (G.UPDATING, None): Step(update_members, GT.UPDATE_FAILED),
    (G.UPDATING, ReprotectPlan): Step(reprotect, GT.REPROTECT_FAILED),
    (G.FAILOVERING, FailoverPlan): Step(failover, GT.FAILOVER_FAILED),
    (G.REVERSING, SwitchoverPlan): Step(reverse, GT.REVERSE_FAILED),
    (G.DELETING, None): Step(remove, GT.DELETE_FAILED),
}


def step_key(group: ReplicationGroup) -> tuple[GroupStatus, PlanKind]:
    plan = plan_of(group)
    return GroupStatus(group.status), None if plan is None else type(plan)


def _step_for(group: ReplicationGroup) -> Step[ReplicationGroup]:
    key = step_key(group)
    step = STEPS.get(key)
    if step is not None:
        return step
    # A plan of the wrong kind for the status: fail the transition the way its status fails.
    status, kind = key
    failed = next(s.fail for (st, _), s in STEPS.items() if st == status)
    plan = "no" if kind is None else f"a {kind.__name__}"

    def wrong_plan(runtime: Runtime, group: ReplicationGroup) -> None:
        raise StepFailed(f"group {group.id} is {group.status} with {plan} plan", rep.FD_INTERNAL)

    return Step(wrong_plan, failed)


GROUPS: Kind[ReplicationGroup] = Kind(
    GROUP_MACHINE, ReplicationGroup, _step_for, frozenset(status for status, _ in STEPS)
)


def aggregate(runtime: Runtime, since: datetime | None = None) -> None:
    """Group replication_status, progress and fault_level from the members' measurements:
    of every group, or (`since`) only of groups whose row or a member's row changed since."""
    with runtime.db.session() as session:
        query = select(ReplicationGroup)
        if since is not None:
            touched = select(ReplicationPair.group_id).where(
                ReplicationPair.updated_at >= since, ReplicationPair.group_id.is_not(None)
            )
            query = query.where(
                or_(ReplicationGroup.updated_at >= since, ReplicationGroup.id.in_(touched))
            )  # fmt: skip
        groups = list(session.scalars(query))
        members = select(ReplicationPair).where(ReplicationPair.group_id.in_([g.id for g in groups]))
        pairs = list(session.scalars(members)) if groups else []
    by_group: dict[str, list[ReplicationPair]] = {}
    for p in pairs:
        by_group.setdefault(p.group_id or "", []).append(p)
    for group in groups:
        member_rows = by_group.get(group.id, [])
        measured = aggregate_group(member_rows)
        values: dict[str, str | None] = {
            "replication_status": measured.replication_status,
            "fault_level": measured.fault_level,
            "progress": measured.progress,
        }
        # A suspended member (cut from its peer and the witness) shows in the group's
        # failure_detail too; it is cleared once none is (only where a suspension set it).
        if any((p.arbitration or {}).get("suspended") for p in member_rows):
            values["failure_detail"] = rep.FD_LINK
        elif group.failure_detail == rep.FD_LINK and group.status == GroupStatus.AVAILABLE:
            values["failure_detail"] = None
        if all(getattr(group, k) == v for k, v in values.items()):
            continue
        with runtime.db.session() as session:
            session.execute(
                update(ReplicationGroup)
                .where(ReplicationGroup.id == group.id, ReplicationGroup.status == group.status)
                .values(updated_at=utcnow(), **values)
            )
