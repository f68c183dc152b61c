"""How the reconciler gives disks their replication roles on the agents.

Every config sent here is one the agents treat idempotently (the same role
and epoch again is a no-op), so a step can re-send it after a crash. A
refusal by an agent becomes `StepFailed` with the failure_detail of the
side it was for (`call`); an unreachable agent stays `AgentUnavailable`,
which the step driver retries until `agent_timeout_s`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select

from openevs.contract import (
    AgentRequestFailed,
    AgentUnavailable,
    Arbiter,
    DirtyRanges,
    Peer,
    ReplicationRequest,
    ReplicationState,
    WitnessAddress,
)
from openevs.contract_client import AgentClient
from openevs.db.models import Agent, ReplicationGroup, ReplicationPair, Volume
from openevs.domain import replication as rep
from openevs.domain.arbitration import arbiter_key
from openevs.domain.replication import GROUP_TRANSITIONAL, PairStatus, Role
from openevs.reconciler.driver import StepFailed
from openevs.runtime import Runtime
from openevs.services.agent_errors import failure_detail
from openevs.services.arbitration import witness_of
from openevs.services.replications import open_link

log = logging.getLogger(__name__)

T = TypeVar("T")


def az_of(runtime: Runtime, volume_id: str) -> str:
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


def secondary_config(runtime: Runtime, pair: ReplicationPair, initial: bool) -> ReplicationRequest:
    return ReplicationRequest(
        role=Role.SECONDARY,
        epoch=pair.epoch,
        pair_id=pair.id,
        group_id=pair.group_id,
        link_export=open_link(runtime.sealer, pair.link_export),
        initial_sync=initial,
    )


def unit_epoch_of(runtime: Runtime, pair: ReplicationPair) -> int:
    """The epoch of the pair's arbitration unit: its group's, else its own."""
    if pair.group_id is None:
        return pair.epoch
    with runtime.db.session() as session:
        group = session.get(ReplicationGroup, pair.group_id)
        return pair.epoch if group is None else group.epoch


def arbiter_for(
    runtime: Runtime, pair: ReplicationPair, primary_volume: str, dr_volume: str, epoch: int
) -> Arbiter | None:
    """The arbiter a primary config carries (None: static priority, two AZs)."""
    primary_az, dr_az = az_of(runtime, primary_volume), az_of(runtime, dr_volume)
    return arbiter_with(runtime, pair, witness_of(runtime, primary_az, dr_az), epoch)


def arbiter_with(
    runtime: Runtime, pair: ReplicationPair, witness: WitnessAddress | None, epoch: int
) -> Arbiter | None:
    """`arbiter_for` with the witness of the pair's two AZs already read."""
    if witness is None:
        if len(runtime.settings.azs) > 2 or runtime.settings.witness:
            log.warning("pair %s: no witness address known yet; static priority until one is", pair.id)
        return None
    return Arbiter(
        key=arbiter_key(pair.id, pair.group_id), epoch=epoch, witness=witness,
        suspend_timeout_s=runtime.settings.suspend_io_timeout_s,
    )  # fmt: skip


def primary_config(
    runtime: Runtime, pair: ReplicationPair, initial: bool, mirroring: bool = True
) -> ReplicationRequest:
    peer_az = az_of(runtime, pair.dr_volume_id)
    host, port = nbd_address(runtime, peer_az)
    arbiter = arbiter_for(
        runtime, pair, pair.production_volume_id, pair.dr_volume_id, unit_epoch_of(runtime, pair)
    )
    return ReplicationRequest(
        role=Role.PRIMARY,
        epoch=pair.epoch,
        pair_id=pair.id,
        group_id=pair.group_id,
        peer=Peer(host=host, port=port, export=open_link(runtime.sealer, pair.link_export), az=peer_az),
        mirroring=mirroring,
        initial_sync=initial,
        arbiter=arbiter,
        resync_rate_bytes_per_s=pair.resync_rate_limit_bytes_per_s or 0,
    )


def call(runtime: Runtime, volume_id: str, fn: Callable[[AgentClient], T], *, primary: bool) -> T:
    """One agent call of a step, on the agent of the volume's AZ."""
    try:
        return fn(runtime.agent(az_of(runtime, volume_id)))
    except AgentRequestFailed as exc:
        raise StepFailed(str(exc), failure_detail(exc, primary=primary)) from exc


def set_role(runtime: Runtime, volume_id: str, request: ReplicationRequest, *, primary: bool) -> None:
    call(runtime, volume_id, lambda a: a.set_replication(volume_id, request), primary=primary)


def state_of(runtime: Runtime, volume_id: str, *, primary: bool) -> ReplicationState:
    return call(runtime, volume_id, lambda a: a.get_replication(volume_id), primary=primary)


def dirty_of(runtime: Runtime, volume_id: str) -> DirtyRanges:
    return call(runtime, volume_id, lambda a: a.get_replication_dirty(volume_id), primary=False)


def resume(runtime: Runtime, volume_id: str) -> None:
    call(runtime, volume_id, lambda a: a.resume_replication(volume_id), primary=True)


def configure_pair(runtime: Runtime, pair: ReplicationPair, initial: bool, mirroring: bool = True) -> None:
    """Give the DR disk its secondary role, then the production disk its primary role."""
    set_role(runtime, pair.dr_volume_id, secondary_config(runtime, pair, initial), primary=False)
    primary = primary_config(runtime, pair, initial, mirroring)
    set_role(runtime, pair.production_volume_id, primary, primary=True)


def push_roles(runtime: Runtime, az: str) -> None:
    """After an agent (re)start: re-send the roles of its paired disks (this also
    lifts the fence a restarted primary holds until the controller confirms it).

    Pairs of a group in a transitional status are left to that transition,
    which re-sends their (new) roles itself.
    """
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
                agent.set_replication(pair.dr_volume_id, secondary_config(runtime, pair, False))
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
