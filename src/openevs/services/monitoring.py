"""What the controller's `/metrics` shows of the fleet, read when Prometheus asks.

`read_fleet` loads every pair, group and agent row (what the API shows:
status, replication_status, fault_level, progress) and, for the pairs whose
production agent the watcher last saw healthy, that agent's live
measurement (one `list_replication` call per AZ): dirty bytes, resync rate
and ETA, lag, link and witness. An agent that does not answer leaves those
unknown (absent from the exposition), never made up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC

from sqlalchemy import select

from openevs.contract import AgentError, ReplicationState
from openevs.db.models import Agent, ReplicationGroup, ReplicationPair, Volume
from openevs.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairReading:
    row: ReplicationPair
    production_az: str
    dr_az: str
    live: ReplicationState | None  # None: not measured now (agent down, pair not available)


@dataclass(frozen=True)
class AgentReading:
    az: str
    up: bool
    checked_at_s: float | None  # unix time of the watcher's last check
    capacity_bytes: int


@dataclass(frozen=True)
class FleetReading:
    pairs: list[PairReading]
    groups: list[ReplicationGroup]
    agents: list[AgentReading]


def _live_states(runtime: Runtime, azs: set[str]) -> dict[str, ReplicationState]:
    states: dict[str, ReplicationState] = {}
    for az in sorted(azs):
        try:
            states.update(runtime.agent(az).list_replication())
        except AgentError as exc:
            log.debug("metrics: agent of %s not read: %s", az, exc)
    return states


def read_fleet(runtime: Runtime) -> FleetReading:
    with runtime.db.session() as session:
        pairs = list(session.scalars(select(ReplicationPair).order_by(ReplicationPair.id)))
        groups = list(session.scalars(select(ReplicationGroup).order_by(ReplicationGroup.id)))
        agent_rows = {a.availability_zone: a for a in session.scalars(select(Agent))}
        ids = [v for p in pairs for v in (p.production_volume_id, p.dr_volume_id)]
        rows = session.execute(select(Volume.id, Volume.availability_zone).where(Volume.id.in_(ids)))
        azs: dict[str, str] = {vid: az for vid, az in rows.tuples()}
        session.expunge_all()
    agents = []
    for az in runtime.settings.azs:
        row = agent_rows.get(az)
        checked = row.checked_at if row is not None else None
        agents.append(
            AgentReading(
                az=az,
                up=bool(row and row.healthy),
                checked_at_s=checked.replace(tzinfo=UTC).timestamp() if checked is not None else None,
                capacity_bytes=row.capacity_bytes if row else 0,
            )
        )
    healthy = {a.az for a in agents if a.up}
    wanted = {azs.get(p.production_volume_id, "") for p in pairs} & healthy
    live = _live_states(runtime, wanted)
    readings = []
    for pair in pairs:
        state = live.get(pair.production_volume_id)
        if state is not None and state.pair_id not in ("", pair.id):
            state = None  # the volume's role belongs to another pair now
        readings.append(
            PairReading(
                row=pair,
                production_az=azs.get(pair.production_volume_id, ""),
                dr_az=azs.get(pair.dr_volume_id, ""),
                live=state,
            )
        )
    return FleetReading(pairs=readings, groups=groups, agents=agents)
