"""Drives volumes in creating, extending and deleting forward, and finishes
the disk growth of a group extend whose request died.

Every step is idempotent (the agent calls are) and ends in a compare-and-set
from the status it read, so two reconcilers, or one restarted after a crash,
never apply a step twice.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import exists, select

from openevs.contract_snapshots import CopyRequest
from openevs.db.cas import delete_in_status
from openevs.db.models import Attachment, ReplicationClaim, ReplicationPair, Snapshot, Volume, utcnow
from openevs.domain import replication as rep
from openevs.domain.errors import OpenEvsError
from openevs.domain.states import VOLUME_MACHINE, VolumeStatus, VolumeTrigger
from openevs.domain.volumes import GIB
from openevs.reconciler.driver import Kind, Step, StepFailed
from openevs.runtime import Runtime
from openevs.services import pair_growth

log = logging.getLogger(__name__)


def create(runtime: Runtime, volume: Volume) -> None:
    agent = runtime.agent(volume.availability_zone)
    if volume.snapshot_id is not None or volume.source_volid is not None:
        if not copy_source(runtime, volume):
            return  # the agent's copy goes on: the next pass asks again
    else:
        agent.create_volume(volume.id, volume.size_gb * GIB)
    VOLUMES.advance(runtime, volume, VolumeTrigger.CREATED, fault=None)


def copy_source(runtime: Runtime, volume: Volume) -> bool:
    """Start or follow the agent's copy of the disk's snapshot or source disk; True once done."""
    source_id = volume.source_volid
    if volume.snapshot_id is not None:
        with runtime.db.session() as session:
            snapshot = session.get(Snapshot, volume.snapshot_id)
        if snapshot is None:
            raise StepFailed(f"snapshot {volume.snapshot_id} is gone", rep.FD_INTERNAL)
        source_id = snapshot.volume_id
    assert source_id is not None
    request = CopyRequest(
        source_volume_id=source_id, snapshot_id=volume.snapshot_id, size_bytes=volume.size_gb * GIB
    )
    return runtime.agent(volume.availability_zone).copy_volume(volume.id, request).done


def extend(runtime: Runtime, volume: Volume) -> None:
    runtime.agent(volume.availability_zone).grow_volume(volume.id, volume.target_size_gb * GIB)
    with runtime.db.session() as session:
        attached = session.scalar(select(exists().where(Attachment.volume_id == volume.id)))
    trigger = VolumeTrigger.EXTENDED_ATTACHED if attached else VolumeTrigger.EXTENDED_FREE
    VOLUMES.advance(runtime, volume, trigger, size_gb=volume.target_size_gb, fault=None)


def remove(runtime: Runtime, volume: Volume) -> None:
    runtime.agent(volume.availability_zone).delete_volume(volume.id)
    with runtime.db.session() as session:
        won = delete_in_status(session, Volume, volume.id, VolumeStatus.DELETING)
    if won:
        log.info("volume %s deleted", volume.id)
    else:
        log.info("volume %s: deleted meanwhile; left to whoever deleted it", volume.id)


def _keep_size(volume: Volume) -> dict[str, int]:
    return {"target_size_gb": volume.size_gb}


STEPS: dict[VolumeStatus, Step[Volume]] = {
    VolumeStatus.CREATING: Step(create, VolumeTrigger.CREATE_FAILED),
    VolumeStatus.EXTENDING: Step(extend, VolumeTrigger.EXTEND_FAILED, _keep_size),
    VolumeStatus.DELETING: Step(remove, VolumeTrigger.DELETE_FAILED),
}

VOLUMES: Kind[Volume] = Kind(
    VOLUME_MACHINE,
    Volume,
    lambda volume: STEPS[VolumeStatus(volume.status)],
    frozenset(STEPS),
    records_failure_detail=False,
)


def finish_pair_grows(runtime: Runtime) -> int:
    """Finish the group extends whose request died after claiming the new sizes:
    a paired disk claimed longer ago than `agent_timeout_s` is grown (DR side
    first) and its size recorded, as the request would have. Returns how many."""
    stale = utcnow() - timedelta(seconds=runtime.settings.agent_timeout_s)
    with runtime.db.session() as session:
        pair_ids = set(
            session.scalars(
                select(ReplicationClaim.pair_id)
                .join(Volume, Volume.id == ReplicationClaim.volume_id)
                .where(Volume.target_size_gb > Volume.size_gb, Volume.updated_at < stale)
            )
        )
        pairs = [p for pid in sorted(pair_ids) if (p := session.get(ReplicationPair, pid)) is not None]
    for pair in pairs:
        try:
            pair_growth.finish(runtime, pair.id)
        except OpenEvsError as exc:  # an agent that cannot grow it now: the next pass retries
            log.warning("pair %s: interrupted extend not finished yet: %s", pair.id, exc)
        except Exception:
            log.exception("pair %s: finishing an interrupted extend failed", pair.id)
    return len(pairs)
