"""Disk use cases: create, list, show, update, extend, delete.

Each runs in a unit of work: loads, asks the domain, saves status changes
with compare-and-set, commits and wakes the reconciler, which does the agent
work (file create/grow/remove) of every volume in a transitional status.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from openevs.config import Settings
from openevs.db.models import Attachment, Project, Volume, utcnow
from openevs.domain import codes
from openevs.domain.errors import InvalidInput, InvalidState, NotFound, QuotaExceeded
from openevs.domain.states import VOLUME_MACHINE, VolumeStatus, VolumeTrigger
from openevs.domain.volumes import check_metadata, check_new_size, check_size, check_text
from openevs.runtime import Runtime
from openevs.services.agent_limits import check_agent_volumes
from openevs.services.listing import Page, columns_of, paginate
from openevs.services.replications import refuse_if_paired
from openevs.services.unit_of_work import UnitOfWork, transition
from openevs.services.volume_sources import clone_source, refuse_if_snapshots, snapshot_source

VOLUME_SORT_KEYS = ("created_at", "updated_at", "name", "size_gb", "status", "id")


@dataclass(frozen=True)
class NewVolume:
    size_gb: int
    availability_zone: str
    name: str | None = None
    description: str | None = None
    volume_type: str | None = None
    metadata: dict[str, Any] | None = None
    multiattach: bool = False
    snapshot_id: str | None = None  # made from this snapshot (snapshots)
    source_volid: str | None = None  # cloned from this disk


@dataclass(frozen=True)
class VolumeDetail:
    volume: Volume
    attachments: list[Attachment]


def get_volume(session: Session, project_id: str, volume_id: str) -> Volume:
    volume = session.get(Volume, volume_id)
    if volume is None or volume.project_id != project_id:
        raise NotFound(f"volume {volume_id[:64]} could not be found", code=codes.NOT_FOUND)
    return volume


def _quota(session: Session, settings: Settings, project_id: str) -> tuple[int, int]:
    project = session.get(Project, project_id)
    count_limit = settings.quota_volumes
    gb_limit = settings.quota_gigabytes
    if project is not None:
        count_limit = project.quota_volumes if project.quota_volumes is not None else count_limit
        gb_limit = project.quota_gigabytes if project.quota_gigabytes is not None else gb_limit
    return count_limit, gb_limit


def _usage(session: Session, project_id: str) -> tuple[int, int]:
    row = session.execute(
        select(func.count(Volume.id), func.coalesce(func.sum(Volume.target_size_gb), 0)).where(
            Volume.project_id == project_id
        )
    ).one()
    return int(row[0]), int(row[1])


def _lock_project(session: Session, project_id: str) -> None:
    """Serialize quota checks of one project until this transaction ends.

    Counting usage and then inserting is check-then-act: without the lock,
    concurrent creates all see the same usage and all pass. A no-op UPDATE
    of the project row takes the row lock on PostgreSQL and the writer lock
    on SQLite (where FOR UPDATE does nothing), so the count reads committed
    usage.
    """
    session.execute(
        update(Project)
        .where(Project.id == project_id)
        .values(quota_volumes=Project.quota_volumes)
        .execution_options(synchronize_session=False)
    )


def check_quota(
    session: Session, settings: Settings, project_id: str, add_count: int, add_gb: int
) -> None:
    """Refuse (413) what would take the project past its quota; holds the
    project's quota lock until the transaction ends."""
    _lock_project(session, project_id)
    count_limit, gb_limit = _quota(session, settings, project_id)
    count, gb = _usage(session, project_id)
    if count + add_count > count_limit:
        raise QuotaExceeded(
            f"volume quota exceeded: {count} of {count_limit} disks in use",
            code=codes.QUOTA_INSUFFICIENT,
        )
    if gb + add_gb > gb_limit:
        raise QuotaExceeded(
            f"gigabytes quota exceeded: {gb} of {gb_limit} GB in use, {add_gb} GB requested",
            code=codes.QUOTA_INSUFFICIENT,
        )


def create_volume(runtime: Runtime, project_id: str, user_id: str, new: NewVolume) -> Volume:
    with UnitOfWork(runtime) as uow:
        volume = _new_volume(uow.session, uow.settings, project_id, user_id, new)
        uow.wake_reconciler()
    return volume


def _new_volume(
    session: Session, settings: Settings, project_id: str, user_id: str, new: NewVolume
) -> Volume:
    check_size(new.size_gb)
    check_text(new.name, "name", codes.VOLUME_NAME_INVALID)
    check_text(new.description, "description", codes.VOLUME_DESCRIPTION_INVALID)
    if new.availability_zone not in settings.azs:
        raise InvalidInput(
            f"availability zone {new.availability_zone[:64]!r} does not exist; "
            f"choose one of {', '.join(settings.azs)}",
            code=codes.AZ_INVALID,
        )
    volume_type = new.volume_type or settings.volume_types[0]
    if volume_type not in settings.volume_types:
        raise InvalidInput(
            f"volume type {volume_type[:64]!r} does not exist; "
            f"choose one of {', '.join(settings.volume_types)}",
            code=codes.VOLUME_TYPE_INVALID,
        )
    metadata = check_metadata(new.metadata or {})
    if new.snapshot_id is not None:
        volume_type = snapshot_source(
            session, project_id, new.snapshot_id, new.availability_zone, new.size_gb, new.volume_type
        ).volume_type
    if new.source_volid is not None:
        volume_type = clone_source(
            get_volume(session, project_id, new.source_volid), new.availability_zone, new.size_gb
        ).volume_type
    check_quota(session, settings, project_id, 1, new.size_gb)
    check_agent_volumes(session, settings, new.availability_zone)
    volume = Volume(
        id=str(uuid.uuid4()),
        project_id=project_id,
        user_id=user_id,
        name=new.name or "",
        description=new.description,
        size_gb=new.size_gb,
        target_size_gb=new.size_gb,
        volume_type=volume_type,
        availability_zone=new.availability_zone,
        status=VolumeStatus.CREATING,
        multiattach=new.multiattach,
        metadata_=metadata,
        snapshot_id=new.snapshot_id,
        source_volid=new.source_volid,
    )
    session.add(volume)
    session.flush()
    return volume


def list_volumes(
    session: Session, project_id: str | None, page: Page, filters: dict[str, str | None]
) -> list[Volume]:
    """One page of a project's volumes (project_id None: of every project, for an admin)."""
    stmt = columns_of(Volume)
    if project_id is not None:
        stmt = stmt.where(Volume.project_id == project_id)
    if filters.get("name"):
        stmt = stmt.where(Volume.name == filters["name"])
    if filters.get("status"):
        stmt = stmt.where(Volume.status == filters["status"])
    if filters.get("availability_zone"):
        stmt = stmt.where(Volume.availability_zone == filters["availability_zone"])
    return paginate(session, Volume, stmt, page)


def show_volume(runtime: Runtime, project_id: str, volume_id: str) -> VolumeDetail:
    with UnitOfWork(runtime) as uow:
        volume = get_volume(uow.session, project_id, volume_id)
        return VolumeDetail(volume, attachments_of(uow.session, [volume.id])[volume.id])


def update_volume(
    runtime: Runtime,
    project_id: str,
    volume_id: str,
    name: str | None,
    description: str | None,
    metadata: dict[str, Any] | None,
) -> VolumeDetail:
    with UnitOfWork(runtime) as uow:
        volume = get_volume(uow.session, project_id, volume_id)
        check_text(name, "name", codes.VOLUME_NAME_INVALID)
        check_text(description, "description", codes.VOLUME_DESCRIPTION_INVALID)
        if name is not None:
            volume.name = name
        if description is not None:
            volume.description = description
        if metadata is not None:
            volume.metadata_ = check_metadata(metadata)
        volume.updated_at = utcnow()
        uow.session.flush()
        return VolumeDetail(volume, attachments_of(uow.session, [volume.id])[volume.id])


def extend_volume(runtime: Runtime, project_id: str, volume_id: str, new_size_gb: int) -> Volume:
    with UnitOfWork(runtime) as uow:
        volume = begin_extend(uow.session, uow.settings, project_id, volume_id, new_size_gb)
        uow.wake_reconciler()
    return volume


def begin_extend(
    session: Session, settings: Settings, project_id: str, volume_id: str, new_size_gb: int
) -> Volume:
    """Move the volume to extending towards `new_size_gb`, in the caller's transaction."""
    volume = get_volume(session, project_id, volume_id)
    refuse_if_paired(session, volume.id, "extended")
    if volume.status not in (VolumeStatus.AVAILABLE, VolumeStatus.IN_USE):
        raise InvalidState(
            f"volume status must be available or in-use to extend, not {volume.status}",
            code=codes.EXTEND_STATUS_INVALID,
        )
    if volume.multiattach and volume.status != VolumeStatus.AVAILABLE:
        raise InvalidState(
            "a multiattach volume must be available (detached) to extend",
            code=codes.MULTIATTACH_EXTEND_STATUS,
        )
    check_new_size(volume.size_gb, new_size_gb)
    check_quota(session, settings, project_id, 0, new_size_gb - volume.size_gb)
    # The size check above used this size: an extend that finished meanwhile
    # (status back to available, size larger) must not be "extended" to less.
    transition(
        session, VOLUME_MACHINE, volume, VolumeTrigger.EXTEND, unchanged={"size_gb": volume.size_gb},
        target_size_gb=new_size_gb,
    )  # fmt: skip
    return volume


def delete_volume(runtime: Runtime, project_id: str, volume_id: str, cascade: bool = False) -> None:
    with UnitOfWork(runtime) as uow:
        _begin_delete(uow.session, project_id, volume_id, cascade)
        uow.wake_reconciler()


def _begin_delete(session: Session, project_id: str, volume_id: str, cascade: bool) -> None:
    volume = get_volume(session, project_id, volume_id)
    if volume.status == VolumeStatus.DELETING:
        return
    refuse_if_paired(session, volume.id, "deleted")
    refuse_if_snapshots(session, volume, cascade)
    try:
        VOLUME_MACHINE.next(volume.status, VolumeTrigger.DELETE)
    except InvalidState:
        raise InvalidState(
            "volume status must be available, error, error_extending, error_rollbacking or error_deleting "
            f"to delete, not {volume.status}"
            + (": detach it first" if volume.status == VolumeStatus.IN_USE else ""),
            code=codes.DELETE_STATUS_INVALID,
        ) from None
    transition(session, VOLUME_MACHINE, volume, VolumeTrigger.DELETE)


def attachments_of(session: Session, volume_ids: list[str]) -> dict[str, list[Attachment]]:
    result: dict[str, list[Attachment]] = {vid: [] for vid in volume_ids}
    if not volume_ids:
        return result
    rows = session.scalars(
        select(Attachment)
        .where(Attachment.volume_id.in_(volume_ids))
        .order_by(Attachment.created_at)
    )
    for row in rows:
        result[row.volume_id].append(row)
    return result
