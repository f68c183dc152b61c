"""What a disk's snapshots and sources decide about the disk: it cannot be deleted
while it has snapshots or is being cloned, and a disk made from a snapshot
must match it (AZ, size, type). Used by services/volumes.py and snapshots.py.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from openevs.db.models import Snapshot, Volume
from openevs.domain import codes
from openevs.domain.errors import InvalidInput, InvalidState, NotFound
from openevs.domain.snapshots import SNAPSHOT_TRANSITIONAL, SnapshotStatus


def get_snapshot(session: Session, project_id: str, snapshot_id: str) -> Snapshot:
    snapshot = session.get(Snapshot, snapshot_id)
    if snapshot is None or snapshot.project_id != project_id:
        raise NotFound(f"snapshot {snapshot_id[:64]} could not be found", code=codes.NOT_FOUND)
    return snapshot


def lock_volume(session: Session, volume_id: str) -> None:
    """Hold the disk's row until the transaction ends (a no-op UPDATE): a snapshot
    taken and the disk's delete then never both pass their checks."""
    session.execute(
        update(Volume)
        .where(Volume.id == volume_id)
        .values(status=Volume.status)
        .execution_options(synchronize_session=False)
    )


def refuse_if_source(session: Session, snapshot_id: str) -> None:
    """A snapshot a disk is being created from stays until that copy ended."""
    creating = session.scalar(
        select(Volume.id).where(Volume.snapshot_id == snapshot_id, Volume.status == "creating").limit(1)
    )
    if creating is not None:
        raise InvalidState(f"disk {creating} is being created from this snapshot; delete it once that ended")


def refuse_if_snapshots(session: Session, volume: Volume, cascade: bool) -> None:
    """A disk with snapshots cannot be deleted (with `cascade`, its settled snapshots go with it)."""
    lock_volume(session, volume.id)
    snapshots = list(session.scalars(select(Snapshot).where(Snapshot.volume_id == volume.id)))
    if snapshots and not cascade:
        raise InvalidState(
            f"the disk has {len(snapshots)} snapshot(s); delete them first (or delete with cascade=true)",
            code=codes.DELETE_STATUS_INVALID,
        )
    busy = [s.id for s in snapshots if s.status in SNAPSHOT_TRANSITIONAL]
    if busy:
        raise InvalidState(f"snapshot {busy[0]} of the disk is still changing status; retry once it settled")
    for snapshot in snapshots:
        session.delete(snapshot)  # the agent drops a disk's snapshots with the disk
    creating = session.scalar(
        select(Volume.id).where(Volume.source_volid == volume.id, Volume.status == "creating").limit(1)
    )
    if creating is not None:
        raise InvalidState(f"disk {creating} is being cloned from this disk; delete it once that ended")


def snapshot_source(session: Session, project_id: str, snapshot_id: str, az: str, size_gb: int,
                    volume_type: str | None) -> Volume:  # fmt: skip
    """Check a new disk against the snapshot it is made from; the snapshot's disk."""
    snapshot = get_snapshot(session, project_id, snapshot_id)
    if snapshot.status != SnapshotStatus.AVAILABLE:
        raise InvalidState(
            f"snapshot status must be available to create a disk from it, not {snapshot.status}",
            code="EVS.2043",
        )
    if snapshot.availability_zone != az:
        raise InvalidInput(
            f"a disk made from a snapshot must be in the snapshot's AZ "
            f"{snapshot.availability_zone}, not {az[:64]}",
            code="EVS.2054",
        )
    if size_gb < snapshot.size_gb:
        raise InvalidInput(
            f"size ({size_gb} GB) must be at least the snapshot's size ({snapshot.size_gb} GB)",
            code=codes.VOLUME_SIZE_INVALID,
        )
    source = session.get(Volume, snapshot.volume_id)
    if source is None:
        raise NotFound(f"the disk of snapshot {snapshot.id} could not be found", code=codes.NOT_FOUND)
    if volume_type is not None and volume_type != source.volume_type:
        raise InvalidInput(
            f"volume_type {volume_type[:64]} does not match the snapshot's disk type {source.volume_type}",
            code="EVS.2096",
        )
    return source


def clone_source(source: Volume, az: str, size_gb: int) -> Volume:
    """The disk a new disk is cloned from, checked against the disk asked for."""
    if source.status not in ("available", "in-use"):
        raise InvalidState(f"a disk can be cloned when available or in-use, not {source.status}")
    if source.availability_zone != az:
        raise InvalidInput(
            f"a clone must be in its source's AZ {source.availability_zone}, not {az[:64]}",
            code=codes.AZ_INVALID,
        )
    if size_gb < source.size_gb:
        raise InvalidInput(
            f"size ({size_gb} GB) must be at least the source disk's size ({source.size_gb} GB)",
            code=codes.VOLUME_SIZE_INVALID,
        )
    return source
