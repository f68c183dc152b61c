"""DR drill use cases (an openevs extension on consistency groups): start a drill,
show it, clean it up; and the one step of a drill that creates rows in its own
transaction (a drill disk from a drill snapshot).

A drill's snapshots are ordinary snapshots of the project (they count in its
quota and show in `GET /snapshots`), marked with `drill_id`; the reconciler
takes them all at once on the DR agent (reconciler/drills.py). Its disks are
ordinary disks made from them in the DR AZ.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openevs.db.models import Drill, Snapshot, Volume
from openevs.domain import codes
from openevs.domain.drills import DRILL_MACHINE, DrillStatus, DrillTrigger, check_can_drill
from openevs.domain.errors import Conflict, InvalidState, NotFound
from openevs.domain.snapshots import SNAPSHOT_MACHINE, SnapshotStatus, SnapshotTrigger
from openevs.runtime import Runtime
from openevs.services.groups import get_group, members
from openevs.services.snapshots import check_snapshot_quota
from openevs.services.unit_of_work import UnitOfWork, transition
from openevs.services.volumes import NewVolume, _new_volume


@dataclass(frozen=True)
class DrillMember:
    replication_id: str
    dr_volume_id: str
    snapshot: Snapshot | None
    disk: Volume | None  # the drill disk made from the snapshot


@dataclass(frozen=True)
class DrillDetail:
    drill: Drill
    members: list[DrillMember]


def drill_snapshots(session: Session, drill_id: str) -> list[Snapshot]:
    stmt = select(Snapshot).where(Snapshot.drill_id == drill_id).order_by(Snapshot.volume_id)
    return list(session.scalars(stmt))


def drill_disks(session: Session, snapshot_ids: list[str]) -> dict[str, Volume]:
    """Snapshot id -> the disk made from it."""
    if not snapshot_ids:
        return {}
    stmt = select(Volume).where(Volume.snapshot_id.in_(snapshot_ids))
    return {v.snapshot_id: v for v in session.scalars(stmt) if v.snapshot_id is not None}


def _get_drill(session: Session, project_id: str, group_id: str) -> Drill:
    group = get_group(session, project_id, group_id)
    drill = session.scalar(select(Drill).where(Drill.group_id == group.id))
    if drill is None:
        raise NotFound(f"group {group.id} has no drill", code=codes.NOT_FOUND)
    return drill


def _detail(session: Session, drill: Drill) -> DrillDetail:
    snaps = {s.volume_id: s for s in drill_snapshots(session, drill.id)}
    disks = drill_disks(session, [s.id for s in snaps.values()])
    pairs = {p.dr_volume_id: p.id for p in members(session, drill.group_id)}
    shown = [
        DrillMember(pairs.get(vid, ""), vid, snap, disks.get(snap.id)) for vid, snap in sorted(snaps.items())
    ]
    return DrillDetail(drill, shown)


def start_drill(runtime: Runtime, project_id: str, user_id: str, group_id: str,
                create_disks: bool) -> DrillDetail:  # fmt: skip
    """One snapshot of every DR disk of the group, at one instant; with `create_disks`, a disk of each."""
    with UnitOfWork(runtime) as uow:
        session = uow.session
        group = get_group(session, project_id, group_id)
        existing = session.scalar(select(Drill).where(Drill.group_id == group.id))
        if existing is not None:
            raise Conflict(
                f"group {group.id} has a drill already (status {existing.status}); "
                "clean it up first (openevs group drill --cleanup)"
            )
        pairs = members(session, group.id)
        disks = [session.get(Volume, p.dr_volume_id) for p in pairs]
        dr = [d for d in disks if d is not None]
        dr_azs = {d.availability_zone for d in dr}
        check_can_drill(group.status, group.replication_status, len(dr), len(dr_azs))
        check_snapshot_quota(session, uow.settings, project_id, len(dr))
        drill = Drill(
            id=str(uuid.uuid4()), project_id=project_id, group_id=group.id, user_id=user_id,
            availability_zone=dr[0].availability_zone, status=DrillStatus.CREATING, create_disks=create_disks,
        )  # fmt: skip
        for disk in dr:
            session.add(
                Snapshot(
                    id=str(uuid.uuid4()),
                    project_id=project_id,
                    volume_id=disk.id,
                    availability_zone=disk.availability_zone,
                    name=f"drill-{group.name or group.id[:8]}",
                    description=f"DR drill {drill.id} of group {group.id}",
                    size_gb=disk.size_gb,
                    status=SnapshotStatus.CREATING,
                    metadata_={},
                    drill_id=drill.id,
                )  # fmt: skip
            )
        session.add(drill)
        try:
            session.flush()
        except IntegrityError as exc:  # a drill started at the same time won
            raise Conflict(f"group {group.id} has a drill already") from exc
        uow.wake_reconciler()
        return _detail(session, drill)


def show_drill(runtime: Runtime, project_id: str, group_id: str) -> DrillDetail:
    with UnitOfWork(runtime) as uow:
        return _detail(uow.session, _get_drill(uow.session, project_id, group_id))


def cleanup_drill(runtime: Runtime, project_id: str, group_id: str) -> DrillDetail:
    """Remove the drill's disks, then its snapshots, then the drill."""
    with UnitOfWork(runtime) as uow:
        session = uow.session
        drill = _get_drill(session, project_id, group_id)
        shown = _detail(session, drill)
        if drill.status == DrillStatus.DELETING:
            return shown
        attached = [m.disk.id for m in shown.members if m.disk is not None and m.disk.status == "in-use"]
        if attached:
            raise InvalidState(f"drill disk {attached[0]} is attached: detach it first")
        transition(session, DRILL_MACHINE, drill, DrillTrigger.CLEANUP)
        for member in shown.members:  # a retried cleanup retries the snapshot deletes that failed
            if member.snapshot is not None and member.snapshot.status == SnapshotStatus.ERROR_DELETING:
                transition(session, SNAPSHOT_MACHINE, member.snapshot, SnapshotTrigger.DELETE)
        uow.wake_reconciler()
        return _detail(session, drill)


def make_drill_disk(runtime: Runtime, drill: Drill, snapshot: Snapshot) -> Volume:
    """The drill disk of `snapshot` (made once: the drill's row is held while checking)."""
    with UnitOfWork(runtime) as uow:
        session = uow.session
        session.execute(
            update(Drill).where(Drill.id == drill.id).values(status=Drill.status)
            .execution_options(synchronize_session=False)
        )  # fmt: skip
        made = drill_disks(session, [snapshot.id]).get(snapshot.id)
        if made is not None:
            return made
        new = NewVolume(
            size_gb=snapshot.size_gb, availability_zone=snapshot.availability_zone,
            name=f"drill-{snapshot.volume_id[:8]}", description=f"DR drill {drill.id}: {snapshot.volume_id}",
            snapshot_id=snapshot.id,
        )  # fmt: skip
        volume = _new_volume(session, uow.settings, drill.project_id, drill.user_id, new)
        uow.wake_reconciler()
        return volume
