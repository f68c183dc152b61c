"""The snapshots of one agent's pool: chains, their NBD exports and their long jobs.

`SnapshotStore` is what the control routes (snapshot_control.py) drive;
the exports it hands the NBD server are in snapshot_exports.py.

Long work (deleting a snapshot that must be merged, copying a snapshot or a
volume into a new volume, a rollback) runs as a job: the first request
starts it, asking again reports its progress, `done` once it ended; a job
that failed raises its error once and may then be asked for again. Jobs do
not outlive the agent: after a restart the controller asks again and the
job starts over (each is idempotent: a copy writes `.tmp-<id>`, which the
pool removes at start, and renames it only when complete).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openevs.agent.grants import validate_export_name
from openevs.agent.mirror.engine import REGION_BYTES
from openevs.agent.nbd.export import Export
from openevs.agent.pool import (
    TMP_PREFIX,
    FileVolumePool,
    InvalidVolumeRequest,
    PoolError,
    PoolIOError,
    VolumeNotFound,
    data_extents,
    fsync_dir,
    validate_size,
    validate_volume_id,
)
from openevs.agent.snapshot_chain import changed_since, merge_ranges, runs
from openevs.agent.snapshot_exports import SnapshotExport
from openevs.agent.snapshot_groups import GroupTakes, check_members
from openevs.agent.snapshots import SNAPSHOTS_DIR, Snapshot, VolumeChain, chain_directory
from openevs.contract_snapshots import (
    CopyRequest,
    GroupSnapshotRequest,
    JobProgress,
    SnapshotDeletion,
    SnapshotInfo,
)

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
CLONE_PREFIX = "clone-"


@dataclass
class Job:
    task: asyncio.Task[None] | None = None
    copied_bytes: int = 0
    total_bytes: int = 0
    stopped: bool = False  # a thread doing its work checks it (cancelling the task cannot stop it)

    def progress(self) -> JobProgress:
        return JobProgress(done=False, copied_bytes=self.copied_bytes, total_bytes=self.total_bytes)


DropExport = Callable[[str], Awaitable[None]]


class SnapshotStore:
    def __init__(self, pool: FileVolumePool, drop_export: DropExport) -> None:
        self.pool = pool
        self.root = pool.root / SNAPSHOTS_DIR
        self._drop_export = drop_export
        self.chains: dict[str, VolumeChain] = {}
        self.exports: dict[str, tuple[str, str]] = {}  # export name -> (volume_id, snapshot_id)
        self._jobs: dict[str, Job] = {}
        self._group_takes = GroupTakes()
        self._load()

    def _load(self) -> None:
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            volume_id = directory.name
            if not directory.is_dir() or not self.pool.exists(volume_id):
                log.warning("snapshots of absent volume %s removed", volume_id)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            chain = VolumeChain(directory, self.pool.path(volume_id))
            chain.load()
            self.chains[volume_id] = chain
            for snap in chain.snaps:
                for name in snap.entry.exports:
                    self.exports[name] = (volume_id, snap.snapshot_id)

    def start(self) -> None:
        """In the event loop: drain what a killed agent left in the overlays."""
        for chain in self.chains.values():
            chain.start()

    def live_chain(self, volume_id: str) -> VolumeChain | None:
        """The chain whose overlay a reader of the volume's live content must see, if any."""
        chain = self.chains.get(volume_id)
        return chain if chain is not None and chain.overlay.pending else None

    async def drain(self, volume_id: str) -> None:
        """The volume's disk file holds its live content (pending regions drained)."""
        chain = self.chains.get(volume_id)
        if chain is not None:
            await chain.drain()

    def close(self) -> None:
        for job in self._jobs.values():
            job.stopped = True
            if job.task is not None:
                job.task.cancel()
        for chain in self.chains.values():
            chain.close()

    # -- snapshots ---------------------------------------------------------

    def _chain(self, volume_id: str, create: bool = False) -> VolumeChain:
        chain = self.chains.get(validate_volume_id(volume_id))
        if chain is None:
            if not self.pool.exists(volume_id):
                raise VolumeNotFound(f"volume {volume_id} not found")
            chain = VolumeChain(chain_directory(self.pool.root, volume_id), self.pool.path(volume_id))
            if create:
                self.chains[volume_id] = chain
        return chain

    def _snapshot(self, volume_id: str, snapshot_id: str) -> tuple[VolumeChain, Snapshot]:
        chain = self._chain(volume_id)
        snap = chain.find(snapshot_id)
        if snap is None:
            raise VolumeNotFound(f"snapshot {snapshot_id} of volume {volume_id} not found")
        return chain, snap

    @staticmethod
    def _info(volume_id: str, snap: Snapshot) -> SnapshotInfo:
        return SnapshotInfo(
            volume_id=volume_id, snapshot_id=snap.snapshot_id, size_bytes=snap.layer.size_bytes,
            preserved_bytes=snap.allocated_bytes(), deleting=snap.deleting,
        )  # fmt: skip

    async def take(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        validate_volume_id(snapshot_id)
        chain = self._chain(volume_id, create=True)
        return self._info(volume_id, await chain.take(snapshot_id))

    async def take_together(self, request: GroupSnapshotRequest) -> list[SnapshotInfo]:
        """Every member's snapshot at one instant (snapshot_groups.py)."""
        check_members(request.members)
        members = [(self._chain(m.volume_id, create=True), m.snapshot_id) for m in request.members]
        snaps = await self._group_takes.take(members)
        return [self._info(m.volume_id, s) for m, s in zip(request.members, snaps, strict=True)]

    def info(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        return self._info(volume_id, self._snapshot(volume_id, snapshot_id)[1])

    def list(self, volume_id: str) -> list[SnapshotInfo]:
        return [self._info(volume_id, s) for s in self._chain(volume_id).snaps]

    async def delete(self, volume_id: str, snapshot_id: str) -> SnapshotDeletion:
        validate_volume_id(snapshot_id)
        chain = self.chains.get(validate_volume_id(volume_id))
        key = f"delete:{volume_id}:{snapshot_id}"
        if key not in self._jobs and (chain is None or chain.find(snapshot_id) is None):
            return SnapshotDeletion(done=True)
        assert chain is not None or key in self._jobs

        async def run(_job: Job) -> None:
            assert chain is not None
            snap = chain.find(snapshot_id)
            if snap is not None:
                for name in list(snap.entry.exports):
                    self.exports.pop(name, None)
                    await self._drop_export(name)
            await chain.delete(snapshot_id)

        return SnapshotDeletion(done=self._job(key, run).done)

    # -- jobs --------------------------------------------------------------

    def _job(self, key: str, work: Callable[[Job], Coroutine[Any, Any, None]]) -> JobProgress:
        """Start the job `key`, or report it; a finished job is `done` once, a failed one raises once."""
        job = self._jobs.get(key)
        if job is None:
            job = Job()
            job.task = asyncio.get_running_loop().create_task(work(job), name=key)
            self._jobs[key] = job
            return job.progress()
        task = job.task
        assert task is not None
        if not task.done():
            return job.progress()
        del self._jobs[key]
        exc = task.exception() if not task.cancelled() else PoolIOError(f"{key} was cancelled")
        if isinstance(exc, PoolError):
            raise exc
        if exc is not None:
            raise PoolIOError(f"{key} failed: {exc}") from exc
        return JobProgress(done=True, copied_bytes=job.copied_bytes, total_bytes=job.total_bytes)

    async def copy(self, volume_id: str, request: CopyRequest) -> JobProgress:
        """Make `volume_id` a copy of the request's snapshot (or of the source's state now)."""
        final = self.pool.path(volume_id)
        validate_size(request.size_bytes)
        key = f"copy:{volume_id}"
        source = request.source_volume_id
        snapshot_id = request.snapshot_id or f"{CLONE_PREFIX}{volume_id}"
        if key not in self._jobs and final.is_file():
            leftover = self.chains.get(source)
            if request.snapshot_id is None and leftover is not None and leftover.find(snapshot_id):
                await leftover.delete(snapshot_id)  # a crash between the rename and this
            return JobProgress(done=True)
        if key not in self._jobs:
            if request.snapshot_id is None:
                await self._chain(source, create=True).take(snapshot_id)
            chain, snap = self._snapshot(source, snapshot_id)
            if request.size_bytes < snap.layer.size_bytes:
                raise InvalidVolumeRequest(
                    f"size_bytes {request.size_bytes} is smaller than the source's {snap.layer.size_bytes}"
                )

        async def run(job: Job) -> None:
            chain, snap = self._snapshot(source, snapshot_id)
            chain.readers += 1
            try:
                await asyncio.to_thread(self._copy_view, chain, snap, final, request.size_bytes, job)
            finally:
                chain.readers -= 1
                chain.readers_done.set()
            if request.snapshot_id is None:
                await chain.delete(snapshot_id)

        return self._job(key, run)

    def _copy_view(self, chain: VolumeChain, snap: Snapshot, final: Path, size_bytes: int, job: Job) -> None:
        """Blocking: copy the snapshot's data into `.tmp-<id>`, then rename it to its real name."""
        snaps = list(chain.snaps)
        limit = snap.layer.size_bytes
        ranges = data_extents(chain.volume_fd(), 0, limit)
        for layer in (s.layer for s in snaps[snaps.index(snap) :]):
            ranges += [(f * REGION_BYTES, n * REGION_BYTES) for f, n in runs(layer.preserved)]
        ranges = [(o, min(n, limit - o)) for o, n in merge_ranges(ranges) if o < limit]
        job.total_bytes = sum(n for _, n in ranges)
        tmp = final.with_name(f"{TMP_PREFIX}{final.name[: -len('.img')]}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, size_bytes)
                for offset, length in ranges:
                    for start in range(offset, offset + length, CHUNK_BYTES):
                        if job.stopped:
                            raise OSError(errno.ECANCELED, "the copy was stopped")
                        count = min(CHUNK_BYTES, offset + length - start)
                        data = chain.read(snap, start, count, recheck=True)
                        if data.count(0) != len(data):
                            os.pwrite(fd, data, start)
                        job.copied_bytes += count
                os.fsync(fd)
            finally:
                os.close(fd)
            if job.stopped:
                raise OSError(errno.ECANCELED, "the copy was stopped")
            os.rename(tmp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise PoolIOError(f"copy into {final.name}: {exc.strerror or exc}") from exc

    async def rollback(self, volume_id: str, snapshot_id: str, disk: Export) -> JobProgress:
        """Write the snapshot's view of every region changed since it through `disk` (the user path)."""
        key = f"rollback:{volume_id}:{snapshot_id}"
        if key not in self._jobs:
            self._snapshot(volume_id, snapshot_id)

        async def run(job: Job) -> None:
            chain, snap = self._snapshot(volume_id, snapshot_id)
            await chain.drain()  # pending regions changed since too: preserved first
            chain.readers += 1
            try:
                regions = changed_since([s.layer for s in chain.snaps], chain.snaps.index(snap))
                limit = snap.layer.size_bytes
                starts = [(f * REGION_BYTES, n * REGION_BYTES) for f, n in runs(regions)]
                spans = [(o, min(n, limit - o)) for o, n in starts]
                job.total_bytes = sum(n for _, n in spans)
                for offset, length in spans:
                    for start in range(offset, offset + length, CHUNK_BYTES):
                        count = min(CHUNK_BYTES, offset + length - start)
                        await disk.write(start, chain.read(snap, start, count), False)
                        job.copied_bytes += count
                await disk.flush()
            finally:
                chain.readers -= 1
                chain.readers_done.set()

        return self._job(key, run)

    # -- exports and volumes -------------------------------------------------

    def resolve_export(self, name: str) -> SnapshotExport | None:
        target = self.exports.get(name)
        if target is None:
            return None
        chain = self.chains.get(target[0])
        snap = None if chain is None else chain.find(target[1])
        return None if chain is None or snap is None or snap.deleting else SnapshotExport(chain, snap)

    async def grant_export(self, name: str, volume_id: str, snapshot_id: str) -> None:
        validate_export_name(name)
        chain, snap = self._snapshot(volume_id, snapshot_id)
        if self.exports.get(name) == (volume_id, snapshot_id):
            return
        await self.revoke_export(name)
        async with chain.mutate:
            snap.entry.exports.append(name)
            await asyncio.to_thread(chain.save, chain.snaps)
        self.exports[name] = (volume_id, snapshot_id)

    async def revoke_export(self, name: str) -> None:
        validate_export_name(name)
        target = self.exports.pop(name, None)
        await self._drop_export(name)
        chain = None if target is None else self.chains.get(target[0])
        snap = None if chain is None or target is None else chain.find(target[1])
        if chain is not None and snap is not None and name in snap.entry.exports:
            async with chain.mutate:
                snap.entry.exports.remove(name)
                await asyncio.to_thread(chain.save, chain.snaps)

    async def preserve_data(self, volume_id: str) -> None:
        """Before the volume's content is discarded behind the write path (a reprotect's
        punch): its newest snapshot preserves every region holding data (holes stay zero)."""
        chain = self.chains.get(volume_id)
        if chain is None:
            return
        await chain.drain()  # the disk file is the live disk again, pending regions preserved
        if not chain.snaps:
            return
        for offset, length in data_extents(chain.volume_fd(), 0, chain.snaps[-1].layer.size_bytes):
            for start in range(offset, offset + length, CHUNK_BYTES):
                await chain.preserve(start, min(CHUNK_BYTES, offset + length - start))

    async def drop_volume(self, volume_id: str) -> None:
        """The volume is being deleted: its snapshots, their exports and jobs go with it."""
        chain = self.chains.pop(volume_id, None)
        for key in [k for k in self._jobs if volume_id in k.split(":")]:
            job = self._jobs.pop(key)
            job.stopped = True
            if job.task is not None:
                job.task.cancel()
        if chain is None:
            return
        for name in [n for n, (v, _) in self.exports.items() if v == volume_id]:
            del self.exports[name]
            await self._drop_export(name)
        await chain.stop_draining()  # its threads use the chain's descriptors
        await asyncio.to_thread(chain.drop)
