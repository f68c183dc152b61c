"""Drives snapshots in creating, deleting and rollbacking forward on their disk's agent.

Every agent call is idempotent (taking a snapshot that exists succeeds; a
delete or rollback asked again reports its job), and every move is a
compare-and-set from the status the pass read. A delete or rollback whose
job has not ended leaves the row as it is: the next pass asks again.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete

from openevs.db.models import Snapshot
from openevs.domain.snapshots import SNAPSHOT_MACHINE, SnapshotStatus, SnapshotTrigger
from openevs.reconciler.driver import Kind, Step
from openevs.runtime import Runtime

log = logging.getLogger(__name__)


def create(runtime: Runtime, snapshot: Snapshot) -> None:
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
    if runtime.agent(snapshot.availability_zone).rollback_snapshot(snapshot.volume_id, snapshot.id).done:
        SNAPSHOTS.advance(runtime, snapshot, SnapshotTrigger.ROLLED_BACK, fault=None)


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
