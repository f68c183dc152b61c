"""Snapshot use cases: create, list, show, update, delete, metadata; and the rules
disks obey because of their snapshots (no delete while any exists, sources of
new disks).

Each runs in a unit of work; the reconciler does the agent work of every
snapshot in a transitional status (reconciler/snapshots.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from openevs.config import Settings
from openevs.db.models import Snapshot, utcnow
from openevs.domain import codes
from openevs.domain.errors import InvalidInput, InvalidState, NotFound, QuotaExceeded
from openevs.domain.snapshots import (
    SNAPSHOT_MACHINE,
    SnapshotStatus,
    SnapshotTrigger,
    check_can_snapshot,
    check_snapshot_text,
)
from openevs.domain.states import VOLUME_MACHINE, VolumeStatus, VolumeTrigger
from openevs.domain.volumes import check_metadata
from openevs.runtime import Runtime
from openevs.services.listing import Page, paginate
from openevs.services.unit_of_work import UnitOfWork, transition
from openevs.services.volume_sources import get_snapshot, lock_volume, refuse_if_source
from openevs.services.volumes import _lock_project, get_volume

DELETABLE = (SnapshotStatus.AVAILABLE, SnapshotStatus.ERROR, SnapshotStatus.ERROR_DELETING)
SNAPSHOT_SORT_KEYS = ("created_at", "updated_at", "name", "size_gb", "status", "id")


@dataclass(frozen=True)
class NewSnapshot:
    volume_id: str
    force: bool = False
    name: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None


def check_snapshot_quota(session: Session, settings: Settings, project_id: str, add: int = 1) -> None:
    _lock_project(session, project_id)
    count = session.scalar(select(func.count(Snapshot.id)).where(Snapshot.project_id == project_id)) or 0
    if count + add > settings.quota_snapshots:
        raise QuotaExceeded(
            f"snapshot quota exceeded: {count} of {settings.quota_snapshots} snapshots in use"
            + (f", {add} requested" if add > 1 else ""),
            code=codes.QUOTA_INSUFFICIENT,
        )


def create_snapshot(runtime: Runtime, project_id: str, new: NewSnapshot) -> Snapshot:
    with UnitOfWork(runtime) as uow:
        session = uow.session
        check_snapshot_text(new.name, new.description)
        metadata = check_metadata(new.metadata or {})
        volume = get_volume(session, project_id, new.volume_id)
        lock_volume(session, volume.id)
        session.refresh(volume)
        check_can_snapshot(volume.status, new.force)
        check_snapshot_quota(session, uow.settings, project_id)
        snapshot = Snapshot(
            id=str(uuid.uuid4()),
            project_id=project_id,
            volume_id=volume.id,
            availability_zone=volume.availability_zone,
            name=new.name or "",
            description=new.description,
            size_gb=volume.size_gb,
            status=SnapshotStatus.CREATING,
            metadata_=metadata,
        )
        session.add(snapshot)
        session.flush()
        uow.wake_reconciler()
    return snapshot


def list_snapshots(
    session: Session, project_id: str, page: Page, filters: dict[str, str | None]
) -> list[Snapshot]:
    stmt = select(Snapshot).where(Snapshot.project_id == project_id)
    for name, column in (
        ("name", Snapshot.name),
        ("status", Snapshot.status),
        ("volume_id", Snapshot.volume_id),
        ("availability_zone", Snapshot.availability_zone),
    ):
        if filters.get(name):
            stmt = stmt.where(column == filters[name])
    return paginate(session, Snapshot, stmt, page)


def show_snapshot(runtime: Runtime, project_id: str, snapshot_id: str) -> Snapshot:
    with UnitOfWork(runtime) as uow:
        return get_snapshot(uow.session, project_id, snapshot_id)


def update_snapshot(
    runtime: Runtime, project_id: str, snapshot_id: str, name: str | None, description: str | None
) -> Snapshot:
    with UnitOfWork(runtime) as uow:
        snapshot = get_snapshot(uow.session, project_id, snapshot_id)
        check_snapshot_text(name, description)
        if name is not None:
            snapshot.name = name
        if description is not None:
            snapshot.description = description
        snapshot.updated_at = utcnow()
        uow.session.flush()
        return snapshot


def delete_snapshot(runtime: Runtime, project_id: str, snapshot_id: str) -> None:
    with UnitOfWork(runtime) as uow:
        session = uow.session
        snapshot = get_snapshot(session, project_id, snapshot_id)
        if snapshot.status == SnapshotStatus.DELETING:
            return
        lock_volume(session, snapshot.volume_id)
        if snapshot.status not in DELETABLE:
            raise InvalidState(
                f"snapshot status must be available or error to delete, not {snapshot.status}",
                code="EVS.1047",
            )
        refuse_if_source(session, snapshot.id)
        transition(session, SNAPSHOT_MACHINE, snapshot, SnapshotTrigger.DELETE)
        uow.wake_reconciler()


def rollback_snapshot(runtime: Runtime, project_id: str, snapshot_id: str, volume_id: str) -> Snapshot:
    """Start writing the snapshot's bytes back to its own disk (available or error_rollbacking)."""
    with UnitOfWork(runtime) as uow:
        session = uow.session
        snapshot = get_snapshot(session, project_id, snapshot_id)
        if volume_id != snapshot.volume_id:
            raise InvalidInput(
                f"a snapshot can only be rolled back to its own disk {snapshot.volume_id}, "
                f"not {volume_id[:64]}"
            )
        volume = get_volume(session, project_id, volume_id)
        if volume.status not in (VolumeStatus.AVAILABLE, VolumeStatus.ERROR_ROLLBACKING):
            raise InvalidState(
                f"the disk must be available or error_rollbacking to roll back, not {volume.status}"
                + (": detach it first" if volume.status == VolumeStatus.IN_USE else "")
            )
        if snapshot.status not in (SnapshotStatus.AVAILABLE, SnapshotStatus.ERROR_ROLLBACKING):
            raise InvalidState(f"the snapshot must be available to roll back, not {snapshot.status}")
        transition(session, VOLUME_MACHINE, volume, VolumeTrigger.ROLLBACK)
        transition(session, SNAPSHOT_MACHINE, snapshot, SnapshotTrigger.ROLLBACK)
        uow.wake_reconciler()
        return snapshot


# -- metadata ---------------------------------------------------------------------


def snapshot_metadata(
    runtime: Runtime, project_id: str, snapshot_id: str, merge: dict[str, Any] | None = None,
    replace: dict[str, Any] | None = None, drop: str | None = None,
) -> dict[str, str]:  # fmt: skip
    """Read the metadata; `merge` adds or overwrites keys, `replace` sets all of it, `drop` removes a key."""
    with UnitOfWork(runtime) as uow:
        snapshot = get_snapshot(uow.session, project_id, snapshot_id)
        current = dict(snapshot.metadata_ or {})
        if drop is not None:
            if drop not in current:
                raise NotFound(f"metadata key {drop[:64]!r} not found", code=codes.NOT_FOUND)
            del current[drop]
        if merge is not None:
            current.update(check_metadata(merge))
        if replace is not None:
            current = check_metadata(replace)
        if drop is not None or merge is not None or replace is not None:
            snapshot.metadata_ = check_metadata(current)
            snapshot.updated_at = utcnow()
            uow.session.flush()
        return dict(current)
