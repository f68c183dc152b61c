"""Replication consistency group use cases: create, show, update, delete,
and the planned actions (failover, switchover, reprotect).

Requests are checked against the documented constraints and refused at
once; state changes go through GROUP_MACHINE with compare-and-set, and the
agent work of transitional statuses (creating, updating, failovering,
reversing, deleting) is done by reconciler/groups.py, woken after the
commit. Pause, sync and extend act on the agents within the request
(services/group_actions.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from openevs.config import Settings
from openevs.contract_plans import (
    FailoverPlan,
    MembershipPlan,
    PairFlip,
    ReprotectPlan,
    SwitchoverPlan,
    dump_plan,
)
from openevs.db.models import Agent, Drill, ReplicationGroup, ReplicationPair, Volume, utcnow
from openevs.domain import codes
from openevs.domain import replication as rep
from openevs.domain.arbitration import arbiter_key, arbitration_view
from openevs.domain.errors import ChangedConcurrently, Conflict, InvalidInput, InvalidState, NotFound
from openevs.domain.measurement import GroupResync, group_resync
from openevs.domain.replication import GROUP_MACHINE, GroupStatus, GroupTrigger, PairStatus, ReplicationStatus
from openevs.domain.volumes import check_text
from openevs.runtime import Runtime
from openevs.security.sealing import Sealer
from openevs.services import arbitration, unit_of_work
from openevs.services.agent_limits import lock_azs
from openevs.services.listing import Page, columns_of, paginate
from openevs.services.replications import new_link_export
from openevs.services.unit_of_work import UnitOfWork

GROUP_SORT_KEYS = ("created_at", "updated_at", "name", "status", "id")
PAUSED = (ReplicationStatus.ACTIVE_STOPPED, ReplicationStatus.INACTIVE)


@dataclass(frozen=True)
class NewGroup:
    replication_ids: list[str]
    priority_station: str
    replication_model: str
    name: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class GroupDetail:
    group: ReplicationGroup
    replication_ids: list[str]
    arbitration: dict[str, Any] | None = None  # domain/arbitration.py's view of the members
    resync: GroupResync | None = None  # the members' resync rolled up (domain/measurement.py)


def get_group(session: Session, project_id: str, group_id: str) -> ReplicationGroup:
    group = session.get(ReplicationGroup, group_id)
    if group is None or group.project_id != project_id:
        raise NotFound(
            f"replication consistency group {group_id[:64]} could not be found", code=codes.NOT_FOUND
        )
    return group


def members(session: Session, group_id: str) -> list[ReplicationPair]:
    return list(
        session.scalars(
            select(ReplicationPair)
            .where(ReplicationPair.group_id == group_id)
            .order_by(ReplicationPair.created_at)
        )
    )


MembersView = tuple[list[str], dict[str, Any] | None, GroupResync]


def _members_view(pairs: list[ReplicationPair]) -> MembersView:
    """The members' ids, the group's arbitration view and its resync rolled up."""
    return [p.id for p in pairs], arbitration_view([p.arbitration for p in pairs]), group_resync(pairs)


def members_view(session: Session, group_id: str) -> MembersView:
    return _members_view(members(session, group_id))


@dataclass(frozen=True)
class _Member:
    """What a group's view reads of one member (a ResyncReading)."""

    id: str
    arbitration: dict[str, Any] | None
    dirty_bytes: int | None
    resync_rate_bytes_per_s: float | None
    resync_eta_s: float | None


def members_views(session: Session, group_ids: list[str]) -> dict[str, MembersView]:
    """`members_view` of many groups (a list page): one query of the columns the view reads."""
    by_group: dict[str, list[_Member]] = {gid: [] for gid in group_ids}
    p = ReplicationPair
    if group_ids:
        rows = session.execute(
            select(p.group_id, p.id, p.arbitration, p.dirty_bytes, p.resync_rate_bytes_per_s, p.resync_eta_s)
            .where(p.group_id.in_(group_ids))
            .order_by(p.created_at)
        )
        for group_id, *member in rows.tuples():
            by_group[group_id or ""].append(_Member(*member))
    return {
        gid: ([m.id for m in ms], arbitration_view([m.arbitration for m in ms]), group_resync(ms))
        for gid, ms in by_group.items()
    }


def detail(session: Session, group: ReplicationGroup) -> GroupDetail:
    return GroupDetail(group, *members_view(session, group.id))


def transition(session: Session, group: ReplicationGroup, trigger: GroupTrigger, **values: Any) -> None:
    unit_of_work.transition(session, GROUP_MACHINE, group, trigger, **values)


def _load_pairs(session: Session, project_id: str, ids: list[str], station: str) -> list[ReplicationPair]:
    if len(set(ids)) != len(ids):
        raise InvalidInput("replication_ids lists a pair twice")
    pairs = []
    for pid in ids:
        pair = session.get(ReplicationPair, pid)
        if pair is None or pair.project_id != project_id:
            raise InvalidInput(f"replication pair {pid[:64]} does not exist")
        if pair.status != PairStatus.AVAILABLE:
            raise InvalidState(f"replication pair {pid} must be available, not {pair.status}")
        if pair.group_id is not None:
            raise Conflict(f"replication pair {pid} is already in group {pair.group_id}")
        if pair.priority_station != station:
            raise InvalidInput(
                f"replication pair {pid} has priority_station {pair.priority_station}; "
                f"every member must have the group's priority_station {station}"
            )
        pairs.append(pair)
    return pairs


def _claim(session: Session, group_id: str, pairs: list[ReplicationPair]) -> None:
    """Put the pairs in the group; all or none (a pair claimed meanwhile → 409)."""
    if not pairs:
        return
    result = session.execute(
        update(ReplicationPair)
        .where(
            ReplicationPair.id.in_([p.id for p in pairs]),
            ReplicationPair.group_id.is_(None),
            ReplicationPair.status == PairStatus.AVAILABLE,
        )
        .values(group_id=group_id, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != len(pairs):  # type: ignore[attr-defined]
        raise Conflict("a replication pair was claimed by another group meanwhile; retry")


def _dr_azs(session: Session, pairs: list[ReplicationPair]) -> set[str]:
    ids = [p.dr_volume_id for p in pairs]
    return set(session.scalars(select(Volume.availability_zone).where(Volume.id.in_(ids))))


def _check_limits(session: Session, settings: Settings, station: str, dr_azs: set[str]) -> None:
    limit = settings.group_limit_per_az
    lock_azs(session, {station} | dr_azs)
    primary = session.scalar(
        select(func.count(ReplicationGroup.id)).where(ReplicationGroup.priority_station == station)
    )
    if int(primary or 0) >= limit:
        raise InvalidState(
            f"AZ {station} already has {limit} replication consistency groups (the limit)",
            code=rep.FD_GROUP_LIMIT_PRIMARY,
        )
    for az in dr_azs:
        count = session.scalar(
            select(func.count(func.distinct(ReplicationPair.group_id)))
            .join(Volume, Volume.id == ReplicationPair.dr_volume_id)
            .where(ReplicationPair.group_id.is_not(None), Volume.availability_zone == az)
        )
        if int(count or 0) >= limit:
            raise InvalidState(
                f"AZ {az} already holds the DR side of {limit} replication consistency groups (the limit)",
                code=rep.FD_GROUP_LIMIT_SECONDARY,
            )


def create_group(runtime: Runtime, project_id: str, new: NewGroup) -> GroupDetail:
    with UnitOfWork(runtime) as uow:
        group = _new_group(uow.session, uow.settings, project_id, new)
        uow.wake_reconciler()
        return detail(uow.session, group)


def show_group(runtime: Runtime, project_id: str, group_id: str) -> GroupDetail:
    with UnitOfWork(runtime) as uow:
        return detail(uow.session, get_group(uow.session, project_id, group_id))


def _new_group(session: Session, settings: Settings, project_id: str, new: NewGroup) -> ReplicationGroup:
    rep.check_model(new.replication_model)
    check_text(new.name, "name")
    check_text(new.description, "description")
    if not new.replication_ids:
        raise InvalidInput("replication_ids must name at least one replication pair")
    if new.priority_station not in settings.azs:
        raise InvalidInput(
            f"priority_station {new.priority_station[:64]!r} is not an AZ", code=codes.AZ_INVALID
        )
    pairs = _load_pairs(session, project_id, new.replication_ids, new.priority_station)
    _check_limits(session, settings, new.priority_station, _dr_azs(session, pairs))
    group = ReplicationGroup(
        id=str(uuid.uuid4()),
        project_id=project_id,
        name=new.name or "",
        description=new.description,
        status=GroupStatus.CREATING,
        replication_model=new.replication_model,
        priority_station=new.priority_station,
        fault_level=rep.FAULT_NONE,
        pending={},
    )
    session.add(group)
    session.flush()
    _claim(session, group.id, pairs)
    return group


def list_groups(
    session: Session, project_id: str, page: Page, filters: dict[str, str | None]
) -> list[ReplicationGroup]:
    stmt = columns_of(ReplicationGroup).where(ReplicationGroup.project_id == project_id)
    if filters.get("name"):
        stmt = stmt.where(ReplicationGroup.name == filters["name"])
    if filters.get("status"):
        stmt = stmt.where(ReplicationGroup.status == filters["status"])
    if filters.get("priority_station"):
        stmt = stmt.where(ReplicationGroup.priority_station == filters["priority_station"])
    if filters.get("volume_id"):
        vid = str(filters["volume_id"])
        sub = select(ReplicationPair.group_id).where(
            (ReplicationPair.production_volume_id == vid) | (ReplicationPair.dr_volume_id == vid)
        )
        stmt = stmt.where(ReplicationGroup.id.in_(sub))
    return paginate(session, ReplicationGroup, stmt, page)


def update_group(
    runtime: Runtime,
    project_id: str,
    group_id: str,
    name: str | None,
    description: str | None,
    replication_model: str | None,
    add_ids: list[str],
    remove_ids: list[str],
) -> GroupDetail:
    with UnitOfWork(runtime) as uow:
        group = _update(
            uow.session, project_id, group_id, name, description, replication_model, add_ids, remove_ids
        )
        uow.wake_reconciler()
        return detail(uow.session, group)


def _update(
    session: Session,
    project_id: str,
    group_id: str,
    name: str | None,
    description: str | None,
    replication_model: str | None,
    add_ids: list[str],
    remove_ids: list[str],
) -> ReplicationGroup:
    group = get_group(session, project_id, group_id)
    check_text(name, "name")
    check_text(description, "description")
    if replication_model is not None:
        rep.check_model(replication_model)
    if set(add_ids) & set(remove_ids):
        raise InvalidInput("a pair cannot be both added and removed")
    if not add_ids and not remove_ids and group.status != GroupStatus.AVAILABLE:
        # The name and description change in any status (DESIGN section 3): there
        # is no agent work, so the status is left alone instead of going through
        # updating (which would end in available and lose e.g. failovered).
        rename = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
        session.execute(
            update(ReplicationGroup)
            .where(ReplicationGroup.id == group.id)
            .values(**rename, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.refresh(group)
        return group
    current = {p.id for p in members(session, group.id)}
    if (add_ids or remove_ids) and group.replication_status not in PAUSED:
        raise InvalidState(
            "pairs can be added or removed only while the group is paused "
            f"(replication_status active-stopped or inactive, not {group.replication_status}); "
            "pause it with os-stop-replication-consistency-group first"
        )
    for pid in remove_ids:
        if pid not in current:
            raise InvalidInput(f"replication pair {pid[:64]} is not a member of this group")
    adds = _load_pairs(session, project_id, add_ids, group.priority_station)
    values: dict[str, Any] = {"pending": dump_plan(MembershipPlan(add=add_ids, remove=remove_ids))}
    if name is not None:
        values["name"] = name
    if description is not None:
        values["description"] = description
    transition(session, group, GroupTrigger.UPDATE, **values)
    _claim(session, group.id, adds)
    return group


def delete_group(runtime: Runtime, project_id: str, group_id: str) -> None:
    with UnitOfWork(runtime) as uow:
        group = get_group(uow.session, project_id, group_id)
        uow.wake_reconciler()
        if group.status == GroupStatus.DELETING:
            return
        if members(uow.session, group.id):
            raise InvalidState(
                "the group still has replication pairs; remove them first (PUT remove_replication_ids)"
            )
        if uow.session.scalar(select(Drill.id).where(Drill.group_id == group.id)) is not None:
            raise InvalidState("the group has a drill; clean it up first (openevs group drill --cleanup)")
        transition(uow.session, group, GroupTrigger.DELETE)


def _flip_plan(pairs: list[ReplicationPair], sealer: Sealer) -> dict[str, PairFlip]:
    """Per member: the next epoch, a fresh link secret, and the roles after the flip.
    Fixed when the request is accepted, so a crashed reconciler resumes the same plan."""
    return {
        p.id: PairFlip(
            epoch=p.epoch + 1,
            link_export=new_link_export(sealer),
            new_primary=p.dr_volume_id,
            old_primary=p.production_volume_id,
        )
        for p in pairs
    }


def _failover_sides(
    session: Session, group: ReplicationGroup, pairs: list[ReplicationPair]
) -> tuple[str, str]:
    """(primary AZ, DR AZ) of a group: priority_station and its members' DR disks."""
    dr = _dr_azs(session, pairs) - {group.priority_station}
    return group.priority_station, min(dr) if dr else group.priority_station


def failover_group(runtime: Runtime, project_id: str, group_id: str, force: bool = False) -> None:
    """Ask the witness for the DR side's grant at the next epoch (outside any
    transaction), then record the new epoch and link of every member and enter
    failovering (services/arbitration.py: 409 for a live lease, 400 for an
    unreachable witness; `force` is openevs-force-failover's override)."""
    with UnitOfWork(runtime) as uow:
        group = get_group(uow.session, project_id, group_id)
        pairs = members(uow.session, group.id)
        if not pairs:
            raise InvalidState("the group has no replication pairs to fail over")
        GROUP_MACHINE.next(group.status, GroupTrigger.FAILOVER)  # refuse a wrong status at once
        seen = (group.status, group.epoch)
        primary_az, dr_az = _failover_sides(uow.session, group, pairs)
        agent = uow.session.get(Agent, primary_az)
        primary_answers = agent is not None and agent.healthy
    epoch = seen[1] + 1
    witness = arbitration.witness_of(runtime, primary_az, dr_az)
    if witness is not None:
        arbitration.check_failover(
            witness, arbiter_key(group_id, group_id=group_id), epoch, dr_az,
            force=force, primary_answers=primary_answers, tls=runtime.settings.control_tls_files(),
        )  # fmt: skip
    with UnitOfWork(runtime) as uow:
        group = get_group(uow.session, project_id, group_id)
        if (group.status, group.epoch) != seen:
            raise ChangedConcurrently(f"group {group_id} moved on while the witness was asked; retry")
        pairs = members(uow.session, group.id)
        pending = dump_plan(FailoverPlan(pairs=_flip_plan(pairs, runtime.sealer), epoch=epoch, force=force))
        transition(uow.session, group, GroupTrigger.FAILOVER, pending=pending)
        uow.wake_reconciler()


def force_failover_group(runtime: Runtime, project_id: str, group_id: str) -> None:
    """openevs-force-failover-replication-consistency-group: failover overriding the
    witness (a live lease of the old primary, or an unreachable witness)."""
    failover_group(runtime, project_id, group_id, force=True)


def reverse_group(runtime: Runtime, project_id: str, group_id: str) -> None:
    """Switchover: record the flip of every member, then enter reversing."""
    with UnitOfWork(runtime) as uow:
        group = get_group(uow.session, project_id, group_id)
        pairs = members(uow.session, group.id)
        if group.status == GroupStatus.AVAILABLE and group.replication_status != ReplicationStatus.ACTIVE:
            raise InvalidState(
                "a switchover needs every pair in sync (replication_status active, not "
                f"{group.replication_status}); sync the group first"
            )
        if not pairs:
            raise InvalidState("the group has no replication pairs to switch over")
        pending = dump_plan(SwitchoverPlan(pairs=_flip_plan(pairs, runtime.sealer), epoch=group.epoch + 1))
        transition(uow.session, group, GroupTrigger.REVERSE, pending=pending)
        uow.wake_reconciler()


def reprotect_group(runtime: Runtime, project_id: str, group_id: str) -> None:
    """Enter updating with a reprotect plan: the reconciler resyncs towards the old primaries."""
    with UnitOfWork(runtime) as uow:
        group = get_group(uow.session, project_id, group_id)
        if not members(uow.session, group.id):
            raise InvalidState("the group has no replication pairs to reprotect")
        transition(uow.session, group, GroupTrigger.REPROTECT, pending=dump_plan(ReprotectPlan()))
        uow.wake_reconciler()
