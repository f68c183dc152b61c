"""Drives replication pairs: sets roles on both agents, tears them down, and
copies the measured replication state of each pair into its row.

`replication_status`, `progress` and `fault_level` are never set by a rule
here: they are what the production disk's agent reports of its bytes (dirty
bitmap, link, running sync), or fault "2" when that agent cannot be reached.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update

from openevs.agent.interface import AgentRequestFailed, AgentUnavailable
from openevs.db.models import Agent, ReplicationClaim, ReplicationPair, utcnow
from openevs.domain import replication as rep
from openevs.domain.replication import PairStatus, PairTrigger
from openevs.runtime import Runtime
from openevs.services.connections import regrant_exports
from openevs.services.replications import pair_transition

log = logging.getLogger(__name__)

POOL_REASONS = ("io_error", "no_space")


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


def secondary_config(pair: ReplicationPair, initial: bool) -> dict[str, Any]:
    return {
        "role": "secondary",
        "epoch": pair.epoch,
        "pair_id": pair.id,
        "group_id": pair.group_id,
        "peer": None,
        "link_export": pair.link_export,
        "mirroring": True,
        "initial_sync": initial,
    }


def primary_config(
    runtime: Runtime, pair: ReplicationPair, initial: bool, mirroring: bool = True
) -> dict[str, Any]:
    host, port = nbd_address(runtime, az_of(runtime, pair.dr_volume_id))
    return {
        "role": "primary",
        "epoch": pair.epoch,
        "pair_id": pair.id,
        "group_id": pair.group_id,
        "peer": {"host": host, "port": port, "export": pair.link_export},
        "link_export": None,
        "mirroring": mirroring,
        "initial_sync": initial,
    }


def configure_pair(runtime: Runtime, pair: ReplicationPair, initial: bool) -> None:
    """Give the DR disk its secondary role, then the production disk its primary role."""
    dr_az = az_of(runtime, pair.dr_volume_id)
    prod_az = az_of(runtime, pair.production_volume_id)
    _call(
        runtime, dr_az, "set_replication", pair.dr_volume_id, secondary_config(pair, initial), primary=False
    )
    _call(
        runtime,
        prod_az,
        "set_replication",
        pair.production_volume_id,
        primary_config(runtime, pair, initial),
        primary=True,
    )


def _call(runtime: Runtime, az: str, method: str, *args: Any, primary: bool) -> Any:
    try:
        return getattr(runtime.agent(az), method)(*args)
    except AgentRequestFailed as exc:
        if exc.reason in POOL_REASONS:
            raise StepFailed(str(exc), rep.FD_PRIMARY_POOL if primary else rep.FD_SECONDARY_POOL) from exc
        raise StepFailed(str(exc), rep.FD_INTERNAL) from exc


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
        for volume_id, primary in ((pair.production_volume_id, True), (pair.dr_volume_id, False)):
            _call(runtime, az_of(runtime, volume_id), "delete_replication", volume_id, primary=primary)
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


def measured(state: dict[str, Any] | None) -> dict[str, Any]:
    """The row values that state what the production agent reported."""
    if state is None:
        return {"fault_level": rep.FAULT_PRODUCTION}
    status = state["replication_status"]
    sync = state.get("sync")
    if status == rep.ReplicationStatus.COPYING and sync:
        progress = rep.progress_percent(int(sync["copied_bytes"]), int(sync["total_bytes"]))
    elif status == rep.ReplicationStatus.ACTIVE:
        progress = "100"
    else:
        progress = None
    if state.get("io_error"):
        fault = rep.FAULT_PRODUCTION
    elif state.get("mirroring") and not state.get("link_up"):
        fault = rep.FAULT_LINK
    else:
        fault = rep.FAULT_NONE
    return {
        "replication_status": status,
        "progress": progress,
        "fault_level": fault,
        "synced_bytes": int(state.get("resynced_bytes_total", 0)),
    }


def _record(runtime: Runtime, pair: ReplicationPair, state: dict[str, Any] | None) -> None:
    if state is not None and state.get("role") != "primary":
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
    states: dict[str, dict[str, dict[str, Any]] | None] = {}
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
        copying = copying or (state or {}).get("replication_status") == rep.ReplicationStatus.COPYING
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
                mirroring = bool(state.get("mirroring", True)) if state else True
                agent.set_replication(
                    pair.production_volume_id, primary_config(runtime, pair, False, mirroring)
                )
        except AgentRequestFailed as exc:
            log.warning("pair %s: could not re-send roles to the agent of %s: %s", pair.id, az, exc)
