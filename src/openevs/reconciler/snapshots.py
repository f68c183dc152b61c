"""Drives snapshots in creating, deleting and rollbacking forward on their disk's agent.

Every agent call is idempotent (taking a snapshot that exists succeeds; a
delete or rollback asked again reports its job), and every move is a
compare-and-set from the status the pass read. A delete or rollback whose
job has not ended leaves the row as it is: the next pass asks again.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select

from openevs.contract import AgentRequestFailed
from openevs.db.models import Snapshot, Volume
from openevs.domain.snapshots import SNAPSHOT_MACHINE, SnapshotStatus, SnapshotTrigger
from openevs.domain.states import VolumeStatus, VolumeTrigger
from openevs.reconciler.driver import Kind, Step
from openevs.reconciler.volumes import VOLUMES
from openevs.runtime import Runtime

log = logging.getLogger(__name__)


def create(runtime: Runtime, snapshot: Snapshot) -> None:
    if snapshot.drill_id is not None:
        return  # taken with the rest of its drill, at one instant (reconciler/drills.py)
    runtime.agent(snapshot.availability_zone).create_snapshot(snapshot.volume_id, snapshot.id)
    SNAPSHOTS.advance(runtime, snapshot, SnapshotTrigger.CREATED, progress="100%", fault=None)


def remove(runtime: Runtime, snapshot: Snapshot) -> None:
    if not runtime.agent(snapshot.availability_zone).delete_snapshot(snapshot.volume_id, snapshot.id).done:
        return
    with runtime.db.session() as session:
        session.execute(
            delete(Snapshot).where(Snapshot.id == snapshot.id, Snapshot.status == SnapshotStatus.DELETING)
        )
    log.info("snapshot %s deleted", snapshot.id)


def rollback(runtime: Runtime, snapshot: Snapshot) -> None:
    """The disk settles first: once it left rollbacking, the agent is never asked again
    (a second rollback job would overwrite what its user wrote since)."""
    with runtime.db.session() as session:
        volume = session.get(Volume, snapshot.volume_id)
    if volume is not None and volume.status == VolumeStatus.ROLLBACKING:
        try:
            progress = runtime.agent(snapshot.availability_zone).rollback_snapshot(volume.id, snapshot.id)
        except AgentRequestFailed as exc:
            VOLUMES.advance(runtime, volume, VolumeTrigger.ROLLBACK_FAILED, fault=str(exc)[:1024])
            raise
        if not progress.done:
            return
        VOLUMES.advance(runtime, volume, VolumeTrigger.ROLLED_BACK, fault=None)
    SNAPSHOTS.advance(runtime, snapshot, SnapshotTrigger.ROLLED_BACK, fault=None)


def settle_rollbacks(runtime: Runtime) -> None:
    """A disk left rollbacking by a snapshot whose rollback failed otherwise (timed out) fails too."""
    rolling = select(Snapshot.id).where(
        Snapshot.volume_id == Volume.id, Snapshot.status == SnapshotStatus.ROLLBACKING
    )
    with runtime.db.session() as session:
        stmt = select(Volume).where(Volume.status == VolumeStatus.ROLLBACKING, ~rolling.exists())
        stuck = list(session.scalars(stmt))
    for volume in stuck:
        VOLUMES.advance(runtime, volume, VolumeTrigger.ROLLBACK_FAILED, fault="the rollback did not finish")


STEPS: dict[SnapshotStatus, Step[Snapshot]] = {
    SnapshotStatus.CREATING: Step(create, SnapshotTrigger.CREATE_FAILED),
    SnapshotStatus.DELETING: Step(remove, SnapshotTrigger.DELETE_FAILED),
    SnapshotStatus.ROLLBACKING: Step(rollback, SnapshotTrigger.ROLLBACK_FAILED),
}

SNAPSHOTS: Kind[Snapshot] = Kind(
    SNAPSHOT_MACHINE,
    Snapshot,
    lambda snapshot: STEPS[SnapshotStatus(snapshot.status)],
    frozenset(STEPS),
    records_failure_detail=False,
)
