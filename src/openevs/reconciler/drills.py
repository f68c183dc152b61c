"""Drives DR drills forward (services/drills.py starts and cleans them up).

creating: every drill snapshot still `creating` is taken in ONE agent call
on the DR agent (agent/snapshot_groups.py: one instant across the disks;
asked again after a crash it answers the same snapshots, or takes them all
anew if a crash left only some); then, with `create_disks`, one disk of each
snapshot in the DR AZ (made once: services/drills.make_drill_disk), and the
drill is available once every disk is.

deleting: the drill disks are deleted, then (once gone) the snapshots, then
the drill row. A step that cannot go on (a disk attached meanwhile, a
snapshot whose delete failed) fails the drill to error_deleting; the
cleanup may be asked again.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select, update

from openevs.contract_snapshots import GroupSnapshotMember, GroupSnapshotRequest
from openevs.db.models import Drill, Snapshot, utcnow
from openevs.domain.drills import DRILL_MACHINE, DrillStatus, DrillTrigger
from openevs.domain.errors import DomainError
from openevs.domain.replication import FD_INTERNAL
from openevs.domain.snapshots import SnapshotStatus, SnapshotTrigger
from openevs.domain.states import VolumeStatus
from openevs.reconciler.driver import Kind, Step, StepFailed
from openevs.reconciler.snapshots import SNAPSHOTS
from openevs.runtime import Runtime
from openevs.services.drills import drill_disks, drill_snapshots, make_drill_disk
from openevs.services.volumes import delete_volume

log = logging.getLogger(__name__)


def _snapshots(runtime: Runtime, drill: Drill) -> list[Snapshot]:
    with runtime.db.session() as session:
        return drill_snapshots(session, drill.id)


def create(runtime: Runtime, drill: Drill) -> None:
    snaps = _snapshots(runtime, drill)
    pending = [s for s in snaps if s.status == SnapshotStatus.CREATING]
    if pending:
        members = [GroupSnapshotMember(volume_id=s.volume_id, snapshot_id=s.id) for s in snaps]
        runtime.agent(drill.availability_zone).create_group_snapshot(GroupSnapshotRequest(members=members))
        for snap in pending:
            SNAPSHOTS.advance(runtime, snap, SnapshotTrigger.CREATED, progress="100%", fault=None)
        with runtime.db.session() as session:
            session.execute(
                update(Drill).where(Drill.id == drill.id, Drill.taken_at.is_(None)).values(taken_at=utcnow())
            )
        snaps = _snapshots(runtime, drill)
    failed = [s for s in snaps if s.status != SnapshotStatus.AVAILABLE]
    if failed:
        raise StepFailed(f"drill snapshot {failed[0].id} is {failed[0].status}", FD_INTERNAL)
    if drill.create_disks and not _disks_ready(runtime, drill, snaps):
        return
    DRILLS.advance(runtime, drill, DrillTrigger.CREATED, fault=None)


def _disks_ready(runtime: Runtime, drill: Drill, snaps: list[Snapshot]) -> bool:
    with runtime.db.session() as session:
        disks = drill_disks(session, [s.id for s in snaps])
    for snap in snaps:
        if snap.id not in disks:
            try:
                disks[snap.id] = make_drill_disk(runtime, drill, snap)
            except DomainError as exc:  # quota, agent capacity: the drill cannot finish
                raise StepFailed(f"drill disk of snapshot {snap.id}: {exc}", FD_INTERNAL) from exc
    broken = [d for d in disks.values() if d.status not in (VolumeStatus.CREATING, VolumeStatus.AVAILABLE)]
    if broken:
        raise StepFailed(f"drill disk {broken[0].id} is {broken[0].status}: {broken[0].fault}", FD_INTERNAL)
    return all(d.status == VolumeStatus.AVAILABLE for d in disks.values())


def cleanup(runtime: Runtime, drill: Drill) -> None:
    snaps = _snapshots(runtime, drill)
    with runtime.db.session() as session:
        disks = list(drill_disks(session, [s.id for s in snaps]).values())
    for disk in disks:
        if disk.status == VolumeStatus.DELETING:
            continue
        try:
            delete_volume(runtime, disk.project_id, disk.id)
        except DomainError as exc:
            raise StepFailed(f"drill disk {disk.id}: {exc}", FD_INTERNAL) from exc
    if disks:
        return  # the snapshots go once their disks are gone
    for snap in snaps:
        if snap.status == SnapshotStatus.ERROR_DELETING:
            raise StepFailed(f"drill snapshot {snap.id} could not be deleted: {snap.fault}", FD_INTERNAL)
        if snap.status in (SnapshotStatus.AVAILABLE, SnapshotStatus.ERROR):
            SNAPSHOTS.advance(runtime, snap, SnapshotTrigger.DELETE)
    if snaps:
        return
    with runtime.db.session() as session:
        session.execute(delete(Drill).where(Drill.id == drill.id, Drill.status == DrillStatus.DELETING))
    log.info("drill %s of group %s cleaned up", drill.id, drill.group_id)


def settle_drill_snapshots(runtime: Runtime) -> None:
    """A drill snapshot left `creating` by a drill that failed (an agent timeout) fails too."""
    creating = select(Drill.id).where(Drill.id == Snapshot.drill_id, Drill.status == DrillStatus.CREATING)
    with runtime.db.session() as session:
        stmt = select(Snapshot).where(
            Snapshot.drill_id.is_not(None), Snapshot.status == SnapshotStatus.CREATING, ~creating.exists()
        )
        stuck = list(session.scalars(stmt))
    for snap in stuck:
        SNAPSHOTS.advance(runtime, snap, SnapshotTrigger.CREATE_FAILED, fault="its drill failed")


STEPS: dict[DrillStatus, Step[Drill]] = {
    DrillStatus.CREATING: Step(create, DrillTrigger.CREATE_FAILED),
    DrillStatus.DELETING: Step(cleanup, DrillTrigger.CLEANUP_FAILED),
}

DRILLS: Kind[Drill] = Kind(
    DRILL_MACHINE,
    Drill,
    lambda drill: STEPS[DrillStatus(drill.status)],
    frozenset(STEPS),
    records_failure_detail=False,
)
