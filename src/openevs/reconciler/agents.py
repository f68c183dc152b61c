"""Keeps the controller's view of each AZ's agent true: health, NBD address,
export grants after an agent restart, and pool files without a disk.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from openevs.contract import AgentHealth, AgentRequestFailed, AgentUnavailable
from openevs.db.models import Agent, Attachment, Volume, utcnow
from openevs.reconciler.roles import push_roles
from openevs.runtime import Runtime
from openevs.services.connections import open_export

log = logging.getLogger(__name__)


class AgentWatcher:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.boot_ids: dict[str, str] = {}

    def _record(self, az: str, health: AgentHealth | None) -> bool:
        """Save what the agent reported; True if the witness it serves is new or moved."""
        with self.runtime.db.session() as session:
            row = session.get(Agent, az)
            if row is None:
                row = Agent(availability_zone=az)
                session.add(row)
            row.healthy = health is not None
            row.checked_at = utcnow()
            moved = False
            if health is not None:
                # Also a first sighting: roles sent before it was known carry no arbiter.
                moved = bool(health.witness_port) and (row.witness_port or 0) != health.witness_port
                row.nbd_host = health.nbd_host
                row.nbd_port = health.nbd_port
                row.witness_port = health.witness_port
                row.nbd_tls = health.nbd_tls
                row.capacity_bytes = health.capacity_bytes
            return moved

    def check(self) -> dict[str, bool]:
        result = {}
        for az in self.runtime.settings.azs:
            health: AgentHealth | None = None
            try:
                health = self.runtime.agent(az).health()
            except (AgentUnavailable, AgentRequestFailed) as exc:
                log.debug("agent of %s unavailable: %s", az, exc)
            except Exception:
                log.exception("agent of %s: health check failed", az)
            if self._record(az, health):
                self._witness_moved(az)
            result[az] = health is not None
            if health is not None and self.boot_ids.get(az) != health.boot_id:
                try:
                    self.sync(az)
                    self.boot_ids[az] = health.boot_id
                except (AgentUnavailable, AgentRequestFailed) as exc:
                    log.warning("agent of %s: sync failed, will retry: %s", az, exc)
        return result

    def _witness_moved(self, az: str) -> None:
        """The embedded witness of `az` is new, or restarted on another (ephemeral) port:
        the other AZs' primaries get configs naming its address."""
        log.info("agent of %s: its witness moved; re-sending the other AZs' roles", az)
        for other in self.runtime.settings.azs:
            if other == az:
                continue
            try:
                push_roles(self.runtime, other)
            except (AgentUnavailable, AgentRequestFailed) as exc:
                log.warning("agent of %s: roles not re-sent (the witness of %s moved): %s", other, az, exc)

    def sync(self, az: str) -> None:
        """After an agent (re)start: re-grant live exports, drop orphan files."""
        agent = self.runtime.agent(az)
        with self.runtime.db.session() as session:
            grants = session.execute(
                select(Attachment.export_name, Attachment.volume_id, Attachment.export_read_only)
                .join(Volume, Volume.id == Attachment.volume_id)
                .where(Volume.availability_zone == az, Attachment.export_name.is_not(None))
            ).all()
            known = set(session.scalars(select(Volume.id).where(Volume.availability_zone == az)))
        push_roles(self.runtime, az)
        live_names = set()
        for sealed, volume_id, read_only in grants:
            if sealed is not None:
                name = open_export(self.runtime, sealed)
                agent.grant_export(name, volume_id, read_only)
                live_names.add(name)
        for export in agent.list_exports():
            if export.name not in live_names:
                agent.revoke_export(export.name)
        for info in agent.list_volumes():
            if info.volume_id not in known:
                # Re-check under a fresh read: a file is created only after its row
                # is committed and removed before its row, so no row means orphan.
                with self.runtime.db.session() as session:
                    if session.get(Volume, info.volume_id) is not None:
                        continue
                log.warning("agent of %s: removing orphan volume file %s", az, info.volume_id)
                agent.delete_volume(info.volume_id)
