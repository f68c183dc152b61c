"""Automatic failover (opt-in, OPENEVS_AUTO_FAILOVER): a consistency group whose
primary AZ is gone fails over by itself, through the same use case as an
operator's `os-failover` (services/groups.failover_group: the witness's
grant, the plan, the reconciler's step), so the result is the same.

A group is due when, for `auto_failover_after_s` without a break
(domain/arbitration.auto_failover_due): its primary AZ's agent does not
answer the controller, the DR agent reports no link from the primary for
every member, and the witness would grant the group to the DR side (its
status shows no live lease of the old primary). Off by default: an EVS
failover is an operator's decision. Pairs outside a group have no failover
in the EVS API, so they are never failed over by themselves.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select

from openevs.contract import AgentRequestFailed, AgentUnavailable, ReplicationState, WitnessAddress
from openevs.db.models import Agent, ReplicationGroup, ReplicationPair, Volume
from openevs.domain.arbitration import AutoFailoverReading, arbiter_key, auto_failover_due
from openevs.domain.errors import OpenEvsError
from openevs.domain.replication import GroupStatus
from openevs.runtime import Runtime
from openevs.security.pki import TlsFiles
from openevs.services import arbitration, groups
from openevs.witness.client import WitnessFailed, WitnessUnreachable
from openevs.witness.protocol import RemoteProtocolError

log = logging.getLogger(__name__)


def _witness_would_grant(witness: WitnessAddress, key: str, dr_az: str, tls: TlsFiles | None) -> bool:
    client = arbitration.client_of(witness, dr_az, tls)
    try:
        reply = client.status([key])
    except (WitnessUnreachable, WitnessFailed, RemoteProtocolError):
        return False
    return all(r.holder == dr_az or r.lease_left_s == 0 for r in reply.records)


class AutoFailover:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.since: dict[str, float] = {}  # group id -> when its conditions began to hold

    def run(self) -> None:
        if not self.runtime.settings.auto_failover:
            return
        with self.runtime.db.session() as session:
            available = select(ReplicationGroup).where(ReplicationGroup.status == GroupStatus.AVAILABLE)
            candidates = list(session.scalars(available))
            healthy = {a.availability_zone: a.healthy for a in session.scalars(select(Agent))}
            members: dict[str, list[tuple[str, str]]] = {}  # group -> [(DR volume, its AZ)]
            for pair, az in session.execute(
                select(ReplicationPair, Volume.availability_zone)
                .join(Volume, Volume.id == ReplicationPair.dr_volume_id)
                .where(ReplicationPair.group_id.is_not(None))
            ).tuples():
                members.setdefault(pair.group_id or "", []).append((pair.dr_volume_id, az))
        seen = set()
        dr_states: dict[str, dict[str, ReplicationState] | None] = {}
        for group in candidates:
            disks = members.get(group.id, [])
            if not disks:
                continue
            seen.add(group.id)
            try:
                self._consider(group, disks, healthy, dr_states)
            except Exception:  # the top of a loop: log with the group, go on with the others
                log.exception("group %s: automatic failover check failed", group.id)
        for gone in set(self.since) - seen:
            del self.since[gone]

    def _consider(
        self, group: ReplicationGroup, disks: list[tuple[str, str]], healthy: dict[str, bool],
        dr_states: dict[str, dict[str, ReplicationState] | None],
    ) -> None:  # fmt: skip
        primary_az, dr_az = group.priority_station, disks[0][1]
        primary_reachable = healthy.get(primary_az, False)
        link_down = witness_ok = False
        if not primary_reachable:
            if dr_az not in dr_states:
                try:
                    dr_states[dr_az] = self.runtime.agent(dr_az).list_replication()
                except (AgentUnavailable, AgentRequestFailed):
                    dr_states[dr_az] = None
            states = dr_states[dr_az]
            link_down = states is not None and all(
                (s := states.get(vid)) is not None and not s.link_up for vid, _ in disks
            )
            witness = arbitration.witness_of(self.runtime, primary_az, dr_az)
            key = arbiter_key(group.id, group.id)
            witness_ok = link_down and witness is not None and _witness_would_grant(
                witness, key, dr_az, self.runtime.settings.control_tls_files()
            )
        reading = AutoFailoverReading(primary_reachable, link_down, witness_ok)
        due, since = auto_failover_due(
            reading, self.since.get(group.id), time.monotonic(), self.runtime.settings.auto_failover_after_s
        )
        if since is None:
            self.since.pop(group.id, None)
            return
        self.since[group.id] = since
        if not due:
            return
        log.warning(
            "group %s: primary AZ %s gone for %.1f s, DR link down, witness grants %s: automatic failover",
            group.id, primary_az, time.monotonic() - since, dr_az,
        )  # fmt: skip
        try:
            groups.failover_group(self.runtime, group.project_id, group.id)
        except OpenEvsError as exc:
            log.warning("group %s: automatic failover refused: %s", group.id, exc)
            return
        self.since.pop(group.id, None)
