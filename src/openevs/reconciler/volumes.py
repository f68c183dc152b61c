"""Drives volumes in creating, extending and deleting forward.

Every step is idempotent (the agent calls are) and ends in a compare-and-set
from the status it read, so two reconcilers, or one restarted after a crash,
never apply a step twice.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, exists, select

from openevs.contract import AgentRequestFailed, AgentUnavailable
from openevs.db.cas import compare_and_set
from openevs.db.models import Attachment, Volume, utcnow
from openevs.domain.states import VOLUME_TRANSITIONS, VolumeStatus, VolumeTrigger, next_state
from openevs.domain.volumes import GIB
from openevs.runtime import Runtime

log = logging.getLogger(__name__)


def _advance(runtime: Runtime, volume: Volume, trigger: VolumeTrigger, **values: Any) -> bool:
    new = next_state(VOLUME_TRANSITIONS, "volume", volume.status, trigger)
    with runtime.db.session() as session:
        won = compare_and_set(session, Volume, volume.id, volume.status, new, **values)
    if won:
        log.info("volume %s: %s -> %s", volume.id, volume.status, new)
    return won


def _timed_out(runtime: Runtime, volume: Volume) -> bool:
    since = volume.updated_at or volume.created_at
    return utcnow() - since > timedelta(seconds=runtime.settings.agent_timeout_s)


def create(runtime: Runtime, volume: Volume) -> None:
    try:
        runtime.agent(volume.availability_zone).create_volume(volume.id, volume.size_gb * GIB)
    except AgentUnavailable as exc:
        if _timed_out(runtime, volume):
            _advance(runtime, volume, VolumeTrigger.CREATE_FAILED, fault=f"agent unreachable: {exc}"[:1024])
        return
    except AgentRequestFailed as exc:
        _advance(runtime, volume, VolumeTrigger.CREATE_FAILED, fault=str(exc)[:1024])
        return
    _advance(runtime, volume, VolumeTrigger.CREATED, fault=None)


def extend(runtime: Runtime, volume: Volume) -> None:
    try:
        runtime.agent(volume.availability_zone).grow_volume(volume.id, volume.target_size_gb * GIB)
    except AgentUnavailable as exc:
        if _timed_out(runtime, volume):
            _advance(
                runtime,
                volume,
                VolumeTrigger.EXTEND_FAILED,
                fault=f"agent unreachable: {exc}"[:1024],
                target_size_gb=volume.size_gb,
            )
        return
    except AgentRequestFailed as exc:
        _advance(
            runtime, volume, VolumeTrigger.EXTEND_FAILED, fault=str(exc)[:1024], target_size_gb=volume.size_gb
        )
        return
    with runtime.db.session() as session:
        attached = session.scalar(select(exists().where(Attachment.volume_id == volume.id)))
    trigger = VolumeTrigger.EXTENDED_ATTACHED if attached else VolumeTrigger.EXTENDED_FREE
    _advance(runtime, volume, trigger, size_gb=volume.target_size_gb, fault=None)


def remove(runtime: Runtime, volume: Volume) -> None:
    try:
        runtime.agent(volume.availability_zone).delete_volume(volume.id)
    except AgentUnavailable as exc:
        if _timed_out(runtime, volume):
            _advance(runtime, volume, VolumeTrigger.DELETE_FAILED, fault=f"agent unreachable: {exc}"[:1024])
        return
    except AgentRequestFailed as exc:
        _advance(runtime, volume, VolumeTrigger.DELETE_FAILED, fault=str(exc)[:1024])
        return
    with runtime.db.session() as session:
        session.execute(delete(Volume).where(Volume.id == volume.id, Volume.status == VolumeStatus.DELETING))
    log.info("volume %s deleted", volume.id)


STEPS = {
    VolumeStatus.CREATING: create,
    VolumeStatus.EXTENDING: extend,
    VolumeStatus.DELETING: remove,
}


def pending(runtime: Runtime) -> list[Volume]:
    with runtime.db.session() as session:
        return list(
            session.scalars(
                select(Volume).where(Volume.status.in_(list(STEPS))).order_by(Volume.created_at).limit(200)
            )
        )


def step(runtime: Runtime) -> int:
    """Advance every volume in a transitional status once; returns how many were seen."""
    rows = pending(runtime)
    for volume in rows:
        try:
            STEPS[VolumeStatus(volume.status)](runtime, volume)
        except Exception:
            log.exception("volume %s: reconcile step failed", volume.id)
    return len(rows)
