"""Drives replication pairs: sets roles on both agents, tears them down, and
copies the measured replication state of each pair into its row.

`replication_status`, `progress` and `fault_level` are never set by a rule
here: they are what the production disk's agent reports of its bytes (dirty
bitmap, link, running sync), or fault "2" when that agent cannot be reached.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, select, update

from openevs.contract import (
    AgentClient,
    AgentRequestFailed,
    AgentUnavailable,
    Peer,
    ReplicationRequest,
    ReplicationState,
)
from openevs.db.models import Agent, ReplicationClaim, ReplicationPair, utcnow
from openevs.domain import replication as rep
from openevs.domain.replication import PairStatus, PairTrigger, Role
from openevs.runtime import Runtime
from openevs.services.connections import regrant_exports
from openevs.services.replications import pair_transition

log = logging.getLogger(__name__)

T = TypeVar("T")


class StepFailed(Exception):
    """A pair step failed for good; `failure_detail` is the documented code."""

    def __init__(self, message: str, failure_detail: str) -> None:
        super().__init__(message)
        self.failure_detail = failure_detail


def az_of(runtime: Runtime, volume_id: str) -> str:
    from openevs.db.models import Volume

    with runtime.db.session() as session:
        vol = session.get(Volume, volume_id)
        if vol is None:
            raise StepFailed(f"volume {volume_id} vanished", rep.FD_INTERNAL)
        return vol.availability_zone


def nbd_address(runtime: Runtime, az: str) -> tuple[str, int]:
    with runtime.db.session() as session:
        row = session.get(Agent, az)
        if row is None or not row.nbd_port:
            raise AgentUnavailable(f"the agent of {az} has not reported its NBD address")
        return row.nbd_host, row.nbd_port


def secondary_config(pair: ReplicationPair, initial: bool) -> ReplicationRequest:
    return ReplicationRequest(
        role=Role.SECONDARY,
        epoch=pair.epoch,
        pair_id=pair.id,
        group_id=pair.group_id,
        link_export=pair.link_export,
        initial_sync=initial,
    )


def primary_config(
    runtime: Runtime, pair: ReplicationPair, initial: bool, mirroring: bool = True
) -> ReplicationRequest:
    host, port = nbd_address(runtime, az_of(runtime, pair.dr_volume_id))
    return ReplicationRequest(
        role=Role.PRIMARY,
        epoch=pair.epoch,
        pair_id=pair.id,
        group_id=pair.group_id,
        peer=Peer(host=host, port=port, export=pair.link_export),
        mirroring=mirroring,
        initial_sync=initial,
    )


def configure_pair(runtime: Runtime, pair: ReplicationPair, initial: bool) -> None:
    """Give the DR disk its secondary role, then the production disk its primary role."""
    set_role(runtime, pair.dr_volume_id, secondary_config(pair, initial), primary=False)
    set_role(runtime, pair.production_volume_id, primary_config(runtime, pair, initial), primary=True)


def call(runtime: Runtime, az: str, fn: Callable[[AgentClient], T], *, primary: bool) -> T:
    """One agent call of a step: a refusal becomes StepFailed with its failure_detail."""
    try:
        return fn(runtime.agent(az))
    except AgentRequestFailed as exc:
        if exc.reason.pool_fault:
            raise StepFailed(str(exc), rep.FD_PRIMARY_POOL if primary else rep.FD_SECONDARY_POOL) from exc
        raise StepFailed(str(exc), rep.FD_INTERNAL) from exc


def set_role(runtime: Runtime, volume_id: str, request: ReplicationRequest, *, primary: bool) -> None:
    """Apply a replication config on the agent of the volume's AZ."""
    call(runtime, az_of(runtime, volume_id), lambda a: a.set_replication(volume_id, request), primary=primary)


def state_of(runtime: Runtime, volume_id: str, *, primary: bool) -> ReplicationState:
    return call(runtime, az_of(runtime, volume_id), lambda a: a.get_replication(volume_id), primary=primary)


def _timed_out(runtime: Runtime, pair: ReplicationPair) -> bool:
    since = pair.updated_at or pair.created_at
    return utcnow() - since > timedelta(seconds=runtime.settings.agent_timeout_s)


def _advance(runtime: Runtime, pair: ReplicationPair, trigger: PairTrigger, **values: Any) -> bool:
    with runtime.db.session() as session:
        won = pair_transition(session, pair, trigger, **values)
    if won:
        log.info("pair %s: %s after %s", pair.id, pair.status, trigger)
    return won


def create(runtime: Runtime, pair: ReplicationPair) -> None:
    try:
        configure_pair(runtime, pair, initial=True)
    except AgentUnavailable as exc:
        if _timed_out(runtime, pair):
            _advance(
                runtime,
                pair,
                PairTrigger.CREATE_FAILED,
                failure_detail=rep.FD_LINK,
                replication_status=rep.ReplicationStatus.ERROR,
                fault=str(exc)[:1024],
            )
        return
    except StepFailed as exc:
        _advance(
            runtime,
            pair,
            PairTrigger.CREATE_FAILED,
            failure_detail=exc.failure_detail,
            replication_status=rep.ReplicationStatus.ERROR,
            fault=str(exc)[:1024],
        )
        return
    _advance(
        runtime,
        pair,
        PairTrigger.CONFIGURED,
        replication_status=rep.ReplicationStatus.COPYING,
        progress="0",
        fault_level=rep.FAULT_NONE,
        failure_detail=None,
    )


def remove(runtime: Runtime, pair: ReplicationPair) -> None:
    try:
        prod, dr = pair.production_volume_id, pair.dr_volume_id
        call(runtime, az_of(runtime, prod), lambda a: a.delete_replication(prod), primary=True)
        call(runtime, az_of(runtime, dr), lambda a: a.delete_replication(dr), primary=False)
    except AgentUnavailable as exc:
        if _timed_out(runtime, pair):
            _advance(
                runtime, pair, PairTrigger.DELETE_FAILED, failure_detail=rep.FD_LINK, fault=str(exc)[:1024]
            )
        return
    except StepFailed as exc:
        _advance(
            runtime, pair, PairTrigger.DELETE_FAILED, failure_detail=exc.failure_detail, fault=str(exc)[:1024]
        )
        return
    with runtime.db.session() as session:
        session.execute(delete(ReplicationClaim).where(ReplicationClaim.pair_id == pair.id))
        session.execute(
            delete(ReplicationPair).where(
                ReplicationPair.id == pair.id, ReplicationPair.status == PairStatus.DELETING
            )
        )
    try:
        regrant_exports(runtime, [pair.production_volume_id, pair.dr_volume_id])
    except (AgentUnavailable, AgentRequestFailed) as exc:
        log.warning("pair %s: exports not re-granted yet (done when the agent returns): %s", pair.id, exc)
    log.info("pair %s deleted; both disks are ordinary disks again", pair.id)


def measured(state: ReplicationState | None) -> dict[str, Any]:
    """The row values that state what the production agent reported."""
    if state is None:
        return {"fault_level": rep.FAULT_PRODUCTION}
    status = state.replication_status
    sync = state.sync
    if status == rep.ReplicationStatus.COPYING and sync:
        progress = rep.progress_percent(sync.copied_bytes, sync.total_bytes)
    elif status == rep.ReplicationStatus.ACTIVE:
        progress = "100"
    else:
        progress = None
    if state.io_error:
        fault = rep.FAULT_PRODUCTION
    elif state.mirroring and not state.link_up:
        fault = rep.FAULT_LINK
    else:
        fault = rep.FAULT_NONE
    return {
        "replication_status": None if status is None else str(status),
        "progress": progress,
        "fault_level": fault,
        "synced_bytes": state.resynced_bytes_total,
    }


def _record(runtime: Runtime, pair: ReplicationPair, state: ReplicationState | None) -> None:
    if state is not None and state.role is not Role.PRIMARY:
        return  # roles are being (re)configured; the next pass measures again
    values = measured(state)
    changed = {k: v for k, v in values.items() if getattr(pair, k) != v}
    if not changed:
        return
    with runtime.db.session() as session:
        session.execute(
            update(ReplicationPair)
            .where(ReplicationPair.id == pair.id, ReplicationPair.status == pair.status)
            .values(updated_at=utcnow(), **changed)
        )


def observe_all(runtime: Runtime) -> bool:
    """Measure every available pair, one call per production AZ; True if any copies."""
    from openevs.db.models import Volume

    with runtime.db.session() as session:
        pairs = list(
            session.scalars(select(ReplicationPair).where(ReplicationPair.status == PairStatus.AVAILABLE))
        )
        ids = [p.production_volume_id for p in pairs]
        azs = dict(
            session.execute(select(Volume.id, Volume.availability_zone).where(Volume.id.in_(ids))).all()
        )
    states: dict[str, dict[str, ReplicationState] | None] = {}
    for az in sorted(set(azs.values())):
        try:
            states[az] = runtime.agent(az).list_replication()
        except AgentUnavailable:
            states[az] = None
        except AgentRequestFailed as exc:
            log.warning("agent of %s: cannot read replication states: %s", az, exc)
    copying = False
    for pair in pairs:
        prod_az = azs.get(pair.production_volume_id)
        if prod_az is None or prod_az not in states:
            continue
        by_volume = states[prod_az]
        state = None if by_volume is None else by_volume.get(pair.production_volume_id)
        if by_volume is not None and state is None:
            continue  # the agent does not know it yet: being configured
        try:
            _record(runtime, pair, state)
        except Exception:
            log.exception("pair %s: observe failed", pair.id)
        copying = copying or (state is not None and state.replication_status is rep.ReplicationStatus.COPYING)
    return copying


def step(runtime: Runtime) -> int:
    """Advance pairs in creating and deleting; returns how many were seen."""
    with runtime.db.session() as session:
        busy = list(
            session.scalars(
                select(ReplicationPair).where(
                    ReplicationPair.status.in_([PairStatus.CREATING, PairStatus.DELETING])
                )
            )
        )
    for pair in busy:
        try:
            (create if pair.status == PairStatus.CREATING else remove)(runtime, pair)
        except Exception:
            log.exception("pair %s: reconcile step failed", pair.id)
    return len(busy)


def push_roles(runtime: Runtime, az: str) -> None:
    """After an agent (re)start: re-send the roles of its paired disks (this also
    lifts the fence a restarted primary holds until the controller confirms it).

    Pairs of a group in a transitional status are left to that transition,
    which re-sends their (new) roles itself.
    """
    from openevs.db.models import ReplicationGroup, Volume
    from openevs.domain.replication import GROUP_TRANSITIONAL

    with runtime.db.session() as session:
        busy_groups = set(
            session.scalars(
                select(ReplicationGroup.id).where(ReplicationGroup.status.in_(list(GROUP_TRANSITIONAL)))
            )
        )
        pairs = [
            p
            for p in session.scalars(
                select(ReplicationPair).where(ReplicationPair.status == PairStatus.AVAILABLE)
            )
            if p.group_id not in busy_groups
        ]
        azs = {v.id: v.availability_zone for v in session.scalars(select(Volume))}
    agent = runtime.agent(az)
    for pair in pairs:
        try:
            if azs.get(pair.dr_volume_id) == az:
                agent.set_replication(pair.dr_volume_id, secondary_config(pair, False))
            if azs.get(pair.production_volume_id) == az:
                state = None
                with contextlib.suppress(AgentUnavailable, AgentRequestFailed):
                    state = agent.get_replication(pair.production_volume_id)
                mirroring = state.mirroring if state is not None else True
                agent.set_replication(
                    pair.production_volume_id, primary_config(runtime, pair, False, mirroring)
                )
        except AgentRequestFailed as exc:
            log.warning("pair %s: could not re-send roles to the agent of %s: %s", pair.id, az, exc)
