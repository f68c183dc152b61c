"""Replication pair use cases: create, list, show, delete.

Every constraint that can be known at once is checked here and refused with
the documented failure_detail code; the agent work (roles, link, initial
copy, teardown) is done by reconciler/replications.py, woken after the commit.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openevs.config import Settings
from openevs.db.models import Attachment, ReplicationClaim, ReplicationPair, Server, Volume
from openevs.domain import codes
from openevs.domain import replication as rep
from openevs.domain.errors import Conflict, InvalidInput, InvalidState, NotFound
from openevs.domain.replication import PAIR_MACHINE, PairStatus, PairTrigger
from openevs.domain.states import ServerStatus, VolumeStatus
from openevs.domain.volumes import check_text
from openevs.runtime import Runtime
from openevs.security.sealing import Sealer
from openevs.services.agent_limits import check_agent_pairs
from openevs.services.listing import Page, columns_of, paginate
from openevs.services.unit_of_work import UnitOfWork, transition

PAIR_SORT_KEYS = ("created_at", "updated_at", "name", "status", "id")
USABLE_VOLUME_STATUSES = (VolumeStatus.AVAILABLE, VolumeStatus.IN_USE)


@dataclass(frozen=True)
class NewPair:
    volume_ids: list[str]
    priority_station: str
    replication_model: str
    name: str | None = None
    description: str | None = None


def get_pair(session: Session, project_id: str, pair_id: str) -> ReplicationPair:
    pair = session.get(ReplicationPair, pair_id)
    if pair is None or pair.project_id != project_id:
        raise NotFound(f"replication pair {pair_id[:64]} could not be found", code=codes.NOT_FOUND)
    return pair


def new_link_export(sealer: Sealer) -> str:
    """A fresh link secret, sealed for the database (open it with `open_link`)."""
    return sealer.seal("link-" + secrets.token_urlsafe(24), "link")


def open_link(sealer: Sealer, sealed: str) -> str:
    return sealer.open(sealed, "link")


def _load_disks(session: Session, project_id: str, ids: list[str], station: str) -> tuple[Volume, Volume]:
    found = {}
    for vid in ids:
        vol = session.get(Volume, vid)
        if vol is not None and vol.project_id == project_id:
            found[vid] = vol
    present = list(found.values())
    if len(present) < 2:
        # Which one is missing: the present one tells by its AZ.
        dr_missing = len(present) == 1 and present[0].availability_zone == station
        missing = next(v for v in ids if v not in found)
        if dr_missing:
            raise InvalidInput(f"the DR disk {missing[:64]} does not exist", code=rep.FD_DR_MISSING)
        raise InvalidInput(
            f"the production disk {missing[:64]} does not exist", code=rep.FD_PRODUCTION_MISSING
        )
    a, b = found[ids[0]], found[ids[1]]
    if a.availability_zone == b.availability_zone:
        raise InvalidInput(
            f"both disks are in {a.availability_zone}; the two disks of a pair must be in different AZs"
        )
    if station not in (a.availability_zone, b.availability_zone):
        raise InvalidInput(
            f"priority_station {station[:64]!r} must be the AZ of one of the two disks "
            f"({a.availability_zone} or {b.availability_zone})"
        )
    return (a, b) if a.availability_zone == station else (b, a)


def _check_dr_servers(session: Session, dr: Volume) -> None:
    running = session.scalars(
        select(Server.id)
        .join(Attachment, Attachment.server_id == Server.id)
        .where(Attachment.volume_id == dr.id, Server.status != ServerStatus.SHUTOFF)
    ).all()
    if running:
        raise InvalidInput(
            f"the DR disk is attached to running server {running[0]}; stop it first",
            code=rep.FD_DR_SERVER_RUNNING,
        )


def create_pair(runtime: Runtime, project_id: str, new: NewPair) -> ReplicationPair:
    with UnitOfWork(runtime) as uow:
        pair = _new_pair(uow.session, uow.settings, project_id, new, runtime.sealer)
        uow.wake_reconciler()
    return pair


def show_pair(runtime: Runtime, project_id: str, pair_id: str) -> ReplicationPair:
    with UnitOfWork(runtime) as uow:
        return get_pair(uow.session, project_id, pair_id)


def _new_pair(
    session: Session, settings: Settings, project_id: str, new: NewPair, sealer: Sealer
) -> ReplicationPair:
    rep.check_model(new.replication_model)
    check_text(new.name, "name")
    check_text(new.description, "description")
    ids = new.volume_ids
    if len(ids) != 2 or len(set(ids)) != 2:
        raise InvalidInput("volume_ids must name exactly two different disks")
    if new.priority_station not in settings.azs:
        raise InvalidInput(
            f"priority_station {new.priority_station[:64]!r} is not an AZ; choose one of "
            f"{', '.join(settings.azs)}",
            code=codes.AZ_INVALID,
        )
    production, dr = _load_disks(session, project_id, ids, new.priority_station)
    if production.size_gb != dr.size_gb or production.volume_type != dr.volume_type:
        raise InvalidInput(
            f"the disks must have the same type and capacity: {production.volume_type} "
            f"{production.size_gb} GB versus {dr.volume_type} {dr.size_gb} GB",
            code=rep.FD_CAPACITY_MISMATCH,
        )
    for vol, code, role in (
        (production, rep.FD_PRODUCTION_PAIRED, "production"),
        (dr, rep.FD_DR_PAIRED, "DR"),
    ):
        if session.get(ReplicationClaim, vol.id) is not None:
            raise Conflict(f"the {role} disk {vol.id} is already in a replication pair", code=code)
        if vol.status not in USABLE_VOLUME_STATUSES:
            raise InvalidState(f"the {role} disk must be available or in-use, not {vol.status}")
    _check_dr_servers(session, dr)
    check_agent_pairs(session, settings, {production.availability_zone, dr.availability_zone})
    pair = ReplicationPair(
        id=str(uuid.uuid4()),
        project_id=project_id,
        name=new.name or "",
        description=new.description,
        status=PairStatus.CREATING,
        replication_status=None,
        replication_model=new.replication_model,
        progress=None,
        fault_level=rep.FAULT_NONE,
        volume_ids=rep.join_volume_ids(ids),
        priority_station=new.priority_station,
        production_volume_id=production.id,
        dr_volume_id=dr.id,
        epoch=1,
        link_export=new_link_export(sealer),
        volume_size_gb=production.size_gb,
        volume_type=production.volume_type,
        multiattach=production.multiattach,
    )
    session.add(pair)
    session.flush()
    try:
        with session.begin_nested():
            session.add(ReplicationClaim(volume_id=production.id, pair_id=pair.id))
            session.add(ReplicationClaim(volume_id=dr.id, pair_id=pair.id))
            session.flush()
    except IntegrityError as exc:
        raise Conflict(
            "one of the disks was claimed by another replication pair meanwhile",
            code=rep.FD_PRODUCTION_PAIRED,
        ) from exc
    return pair


def list_pairs(
    session: Session, project_id: str, page: Page, filters: dict[str, str | None]
) -> list[ReplicationPair]:
    stmt = columns_of(ReplicationPair).where(ReplicationPair.project_id == project_id)
    if filters.get("name"):
        stmt = stmt.where(ReplicationPair.name == filters["name"])
    if filters.get("status"):
        stmt = stmt.where(ReplicationPair.status == filters["status"])
    if filters.get("replication_consistency_group_id"):
        stmt = stmt.where(ReplicationPair.group_id == filters["replication_consistency_group_id"])
    if filters.get("priority_station"):
        stmt = stmt.where(ReplicationPair.priority_station == filters["priority_station"])
    if filters.get("volume_ids"):
        wanted = [v.strip() for v in str(filters["volume_ids"]).split(",") if v.strip()]
        for vid in wanted:
            stmt = stmt.where(
                or_(ReplicationPair.production_volume_id == vid, ReplicationPair.dr_volume_id == vid)
            )
    if filters.get("volume_id"):
        vid = str(filters["volume_id"])
        stmt = stmt.where(
            or_(ReplicationPair.production_volume_id == vid, ReplicationPair.dr_volume_id == vid)
        )
    return paginate(session, ReplicationPair, stmt, page)


def delete_pair(runtime: Runtime, project_id: str, pair_id: str) -> None:
    with UnitOfWork(runtime) as uow:
        pair = get_pair(uow.session, project_id, pair_id)
        uow.wake_reconciler()
        if pair.status == PairStatus.DELETING:
            return
        if pair.group_id is not None:
            raise InvalidState(
                f"the pair is a member of replication consistency group {pair.group_id}; "
                "remove it from the group first"
            )
        transition(uow.session, PAIR_MACHINE, pair, PairTrigger.DELETE)


def pair_of_volume(session: Session, volume_id: str) -> ReplicationPair | None:
    claim = session.get(ReplicationClaim, volume_id)
    return session.get(ReplicationPair, claim.pair_id) if claim else None


def refuse_if_paired(session: Session, volume_id: str, action: str) -> None:
    pair = pair_of_volume(session, volume_id)
    if pair is not None:
        raise InvalidState(
            f"the disk is in replication pair {pair.id}; it cannot be {action} alone"
            + ("; extend the pair's group instead" if action == "extended" else "")
        )
