"""The storage node of one AZ: its pool, its export grants, its replication and its NBD server.

`StorageNode` is what the control API (control.py) drives and what the NBD
server asks, through `resolve_export`, which volume an export name opens.
One `FileExport` is opened per (volume, read_only) and shared by every NBD
connection; it is closed when its volume is deleted. Mutations are
serialised by one lock and their blocking file work runs in a thread, so
the event loop keeps serving NBD traffic while a volume is fsynced.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from openevs.agent.grants import GrantTable, validate_export_name
from openevs.agent.mirror.link_server import LinkServer
from openevs.agent.mirror.manager import ReplicationManager
from openevs.agent.nbd.export import Export, FileExport
from openevs.agent.nbd.server import NbdServer, TlsPolicy
from openevs.agent.nbd_tls import AgentTls
from openevs.agent.pool import FileVolumePool, VolumeNotFound, validate_volume_id
from openevs.agent.resources import open_fds
from openevs.agent.snapshot_exports import CowFileExport
from openevs.agent.snapshot_store import SnapshotStore
from openevs.contract import AgentHealth, ExportGrant, VolumeInfo
from openevs.contract_snapshots import JobProgress
from openevs.security import redacted
from openevs.security.identity import Identity

log = logging.getLogger(__name__)


class StorageNode:
    """One AZ's pool plus the grant table; `start()` brings up the NBD server."""

    def __init__(
        self, az: str, pool_dir: Path, nbd_host: str = "127.0.0.1", nbd_port: int = 0,
        tls: AgentTls | None = None,
        metrics_volumes: frozenset[str] = frozenset(),
        resync_rate_bytes_per_s: int = 0,
    ) -> None:  # fmt: skip
        self.az = az
        self.tls = tls
        # Volumes whose NBD traffic gets series of their own ("all": every one).
        self.metrics_volumes = metrics_volumes
        self.pool = FileVolumePool(Path(pool_dir))
        self.grants = GrantTable(self.pool.root)
        self.nbd_host = nbd_host
        self.boot_id = uuid.uuid4().hex
        self.fd_limits = (0, 0)  # (soft, hard) RLIMIT_NOFILE, set by the runner
        # With TLS the link protocol is mutual TLS and serves agent certificates only.
        link_tls = tls.reloading_link_server_context() if tls is not None else None
        self.links = LinkServer(self._link_export, tls=link_tls)
        serve_tls = tls is not None and tls.policy is not TlsPolicy.OFF
        self.nbd = NbdServer(
            self.resolve_export, nbd_host, nbd_port,
            tls=tls.reloading_server_context() if serve_tls and tls else None,
            tls_policy=tls.policy if serve_tls and tls else None,
            counted_volume=self._counted_volume,
            link_handler=self.links.accept,
        )  # fmt: skip
        self._open: dict[tuple[str, bool], FileExport] = {}  # (volume_id, read_only) -> export
        self._lock = asyncio.Lock()
        self.replication = ReplicationManager(
            self.pool, self._drop_export, self._connection_count, side=az,
            link_tls=tls.reloading_link_context() if tls is not None else None,
            tls=tls.files if tls is not None else None,
            resync_rate_bytes_per_s=resync_rate_bytes_per_s,
        )  # fmt: skip
        self.witness_port = 0  # the witness this agent also serves (runner.py), 0: none
        self.snapshots = SnapshotStore(self.pool, self._drop_export)
        self.replication.before_discard = self.snapshots.preserve_data
        self.replication.live_chain = self.snapshots.live_chain

    @property
    def nbd_port(self) -> int:
        return self.nbd.port

    async def start(self) -> None:
        self.snapshots.start()
        await self.replication.start()
        await self.nbd.start()
        log.info("agent %s: NBD on %s:%d", self.az, self.nbd_host, self.nbd_port)

    async def close(self) -> None:
        await self.nbd.close()
        self.links.close()
        await self.replication.close()
        for export in self._open.values():
            export.close()
        self._open.clear()
        self.snapshots.close()

    # -- NBD side ---------------------------------------------------------

    async def resolve_export(self, name: str, peer: Identity | None = None) -> Export | None:
        """The export an NBD client opens under `name`, or None if not granted.

        User exports are wrapped so that the volume's replication role
        decides what a write does. A secondary's link export is not served
        here but on the link protocol (mirror/link_server.py).
        """
        snapshot = self.snapshots.resolve_export(name)
        if snapshot is not None:
            return snapshot
        grant = self.grants.get(name)
        if grant is None:
            return None
        export = self._file_export(grant.volume_id, grant.read_only)
        return None if export is None else self.replication.wrap(grant.volume_id, export)

    def _counted_volume(self, name: str) -> str | None:
        """The volume export `name` opens, if its traffic is counted on its own."""
        if not self.metrics_volumes:
            return None
        grant = self.grants.get(name)
        volume = grant.volume_id if grant is not None else None
        if volume is None or not ("all" in self.metrics_volumes or volume in self.metrics_volumes):
            return None
        return volume

    def _file_export(self, volume_id: str, read_only: bool) -> FileExport | None:
        key = (volume_id, read_only)
        export = self._open.get(key)
        if export is None:
            path = self.pool.path(volume_id)
            if not path.is_file():
                return None
            export = CowFileExport(path, read_only, self.snapshots.chains, volume_id)
            self._open[key] = export
        return export

    def _link_export(self, name: str) -> FileExport | None:
        """The writable file a secondary serves its primary under link export `name`."""
        volume_id = self.replication.link_export_volume(name)
        return None if volume_id is None else self._file_export(volume_id, False)

    def _connection_count(self, name: str) -> int:
        return self.nbd.connection_count(name) + self.links.open_count(name)

    async def _drop_export(self, name: str) -> None:
        self.nbd.drop_export(name)
        await self.links.revoke(name)

    async def _wait_disconnected(self, names: list[str], timeout_s: float = 5.0) -> None:
        """Let dropped connections unwind before their export's descriptor is closed."""
        count = self.nbd.connection_count
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(count(n) for n in names):
            if asyncio.get_running_loop().time() > deadline:
                shown = ", ".join(redacted(n) for n in names)
                log.warning("agent %s: connections to %s still open", self.az, shown)
                return
            await asyncio.sleep(0.01)

    # -- control side -----------------------------------------------------

    async def health(self) -> AgentHealth:
        capacity, free = await asyncio.to_thread(self.pool.capacity)
        volume_count = await asyncio.to_thread(self.pool.count)
        return AgentHealth(
            az=self.az,
            nbd_host=self.nbd_host,
            nbd_port=self.nbd_port,
            witness_port=self.witness_port,
            nbd_tls=self.nbd.tls_policy.value,
            boot_id=self.boot_id,
            capacity_bytes=capacity,
            free_bytes=free,
            volume_count=volume_count,
            replica_count=len(self.replication.replicas),
            peer_connections=self.replication.link_pools.connection_count,
            fd_soft_limit=self.fd_limits[0],
            fd_hard_limit=self.fd_limits[1],
            open_fds=await asyncio.to_thread(open_fds),
        )

    async def list_volumes(self) -> list[VolumeInfo]:
        return await asyncio.to_thread(self.pool.list)

    async def get_volume(self, volume_id: str) -> VolumeInfo:
        return await asyncio.to_thread(self.pool.info, volume_id)

    async def create_volume(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        async with self._lock:
            return await asyncio.to_thread(self.pool.create, volume_id, size_bytes)

    async def grow_volume(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        # FileExport re-reads the size per request, so open exports see it at once.
        async with self._lock:
            return await asyncio.to_thread(self.pool.grow, volume_id, size_bytes)

    async def delete_volume(self, volume_id: str) -> None:
        validate_volume_id(volume_id)
        async with self._lock:
            await self.replication.delete(volume_id)  # its link export is revoked too
            names = self.grants.names_for(volume_id)
            await asyncio.to_thread(self.grants.revoke, names)
            for name in names:
                await self._drop_export(name)
            await self._wait_disconnected(names)
            for read_only in (False, True):
                export = self._open.pop((volume_id, read_only), None)
                if export is not None:
                    export.close()
            await self.snapshots.drop_volume(volume_id)
            await asyncio.to_thread(self.pool.delete, volume_id)

    async def grant_export(self, name: str, volume_id: str, read_only: bool) -> ExportGrant:
        validate_export_name(name)
        grant = ExportGrant(volume_id=volume_id, read_only=bool(read_only))
        if self.grants.get(name) == grant:
            # Held already (a client asking again, os-initialize_connection is idempotent):
            # nothing to change, so neither the lock nor a thread hop. A volume's grants
            # are revoked before its file goes (delete_volume), so a grant held means a
            # volume there, as the slow path's check would have found.
            return grant
        async with self._lock:
            await asyncio.to_thread(self.pool.info, volume_id)  # NotFound if absent
            replaced = await asyncio.to_thread(self.grants.grant, name, grant)
            if replaced:  # a rw client must not keep writing through a now read-only grant
                await self._drop_export(name)
            return grant

    async def revoke_export(self, name: str) -> None:
        validate_export_name(name)
        async with self._lock:
            await asyncio.to_thread(self.grants.revoke, [name])
            await self._drop_export(name)

    async def rollback_snapshot(self, volume_id: str, snapshot_id: str) -> JobProgress:
        """Roll the volume back through its user write path (snapshots and mirroring see it)."""
        export = self._file_export(volume_id, False)
        if export is None:
            raise VolumeNotFound(f"volume {volume_id} not found")
        disk = self.replication.wrap(volume_id, export)
        return await self.snapshots.rollback(volume_id, snapshot_id, disk)

    def list_exports(self) -> list[tuple[str, ExportGrant]]:
        return self.grants.items()
