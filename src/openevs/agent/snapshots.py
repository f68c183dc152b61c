"""A disk's snapshot chain on disk: `<pool>/snapshots/<volume_id>/` (docs/decisions.md "Snapshots").

`chain.json` lists the snapshots, oldest first, and is the one truth after a
crash (files it does not name are leftovers, removed on load). Each snapshot
has a sparse `<id>.delta` (the preserved regions at their own offsets) and
a `<id>.bitmap` (`BitmapFile`). A region holding data is recorded by the
delta's allocation itself (one fdatasync per copy); an all-zero region is
not copied and recorded by its bit instead.

Rules this module keeps:

- a region counts as preserved once its copy (or bit) is durable, and the
  disk's new data is written only after that;
- only the newest snapshot preserves; `chain.json` names a snapshot before
  any write preserves into it;
- reads of the chain from another thread (copies) re-check, after reading
  the live disk, that no write preserved the region meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from openevs.agent.mirror.bitmap import BitmapFile
from openevs.agent.mirror.engine import REGION_BYTES
from openevs.agent.mirror.regions import BitMap
from openevs.agent.pool import (
    PoolIOError,
    VolumeNotFound,
    data_extents,
    fsync_dir,
    validate_volume_id,
    write_atomic,
)
from openevs.agent.snapshot_chain import (
    LIVE,
    Layer,
    merge_on_delete,
    plan_read,
    regions_of,
    runs,
    source_of,
    to_preserve,
)
from openevs.agent.snapshot_overlay import DATA_FILE, MAP_FILE, Overlay, copy_range

log = logging.getLogger(__name__)

SNAPSHOTS_DIR = "snapshots"
CHAIN_FILE = "chain.json"
DRAIN_BATCH_REGIONS = 256  # 16 MiB preserved per fdatasync
COPY_STEP_REGIONS = 64  # 4 MiB copied from the overlay per thread call
# The background drain of a disk waits until no write came to its overlay for IDLE
# seconds, or its oldest pending write is EXPIRE seconds old (the kernel's default
# dirty expiry), or the agent's overlays are half full (write-back, as the kernel's
# dirty pages); FLUSH, FUA, takes and every reader that needs the disk file whole
# drain at once regardless.
DRAIN_IDLE_S = float(os.environ.get("OPENEVS_SNAPSHOT_DRAIN_IDLE_S", "0.5"))
DRAIN_EXPIRE_S = float(os.environ.get("OPENEVS_SNAPSHOT_DRAIN_EXPIRE_S", "30"))


class ChainEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    size_bytes: int
    exports: list[str] = Field(default_factory=list)


class ChainFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    snapshots: list[ChainEntry] = Field(default_factory=list)


def pread_full(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes from `offset` (zeroes past the end of the file)."""
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            return data + bytes(length - len(data))
        data += more
    return data


class SharedSync:
    """fdatasync of one descriptor shared by concurrent callers (group commit)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.generation = 0  # bumped by every pwrite the caller wants durable
        self._synced = 0
        self._lock = asyncio.Lock()

    async def sync(self) -> None:
        target = self.generation
        if self._synced >= target:
            return
        async with self._lock:
            if self._synced >= target:
                return
            current = self.generation
            await asyncio.to_thread(os.fdatasync, self.fd)
            self._synced = max(self._synced, current)


class Snapshot:
    """One snapshot's open files and its `Layer` (the regions it preserved, durable)."""

    def __init__(self, directory: Path, entry: ChainEntry) -> None:
        self.entry = entry
        self.delta_path = directory / f"{entry.id}.delta"
        self.bitmap = BitmapFile(directory / f"{entry.id}.bitmap")
        self.fd = os.open(self.delta_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.layer = Layer(entry.id, entry.size_bytes, self.bitmap.load() | self._copied_regions())
        self.delta_sync = SharedSync(self.fd)
        self.inflight: dict[int, asyncio.Future[None]] = {}  # region -> its copy being made durable
        self.deleting = False

    @property
    def snapshot_id(self) -> str:
        return self.entry.id

    def _copied_regions(self) -> BitMap:
        """Regions the delta holds in full: a region's copy is written whole and durable
        before the disk is overwritten, and the filesystem shows no block as data before
        its bytes are written (ext4 data=ordered, xfs), so allocation is the record."""
        size, regions = self.entry.size_bytes, BitMap()
        for offset, length in data_extents(self.fd, 0, size):
            end = offset + length
            first = -(-offset // REGION_BYTES)
            last = end // REGION_BYTES if end < size else -(-end // REGION_BYTES)
            if last > first:
                regions.add_range(first, last)
        return regions

    def close(self) -> None:
        self.bitmap.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.close()
        self.bitmap.remove()
        self.delta_path.unlink(missing_ok=True)

    def allocated_bytes(self) -> int:
        return os.fstat(self.fd).st_blocks * 512


async def record(snap: Snapshot, copied: bool, zero: list[int]) -> None:
    """Make copies pwritten into the delta (`copied`) and bits of all-zero regions durable.

    Each region is recorded by one of the two, so both syncs run at once."""
    syncs = []
    if copied:
        snap.delta_sync.generation += 1
        syncs.append(snap.delta_sync.sync())
    if zero and snap.bitmap.set_now(zero):
        syncs.append(snap.bitmap.sync())
    await asyncio.gather(*syncs)


class VolumeChain:
    """The snapshots of one disk, oldest first, and the copy-before-write of its writes."""

    def __init__(self, directory: Path, volume_path: Path) -> None:
        self.directory = directory
        self.volume_path = volume_path
        self.snaps: list[Snapshot] = []
        self._volume_fd = -1
        self._frozen: asyncio.Event | None = None  # set while the newest is merged away
        self.mutate = asyncio.Lock()  # takes and the end of deletes
        self.deletes = asyncio.Lock()  # one delete (merge) at a time
        self.readers = 0  # copy and rollback jobs reading the chain
        self.readers_done = asyncio.Event()
        self.overlay = Overlay(directory)
        self._volume_wfd = -1  # the drain's writable descriptor of the disk file
        self._hold: asyncio.Event | None = None  # set while a take drains for its instant
        self._drain_lock = asyncio.Lock()
        self._drainer: asyncio.Task[None] | None = None
        self._last_write = 0.0  # loop time of the last write to the overlay
        self._closing = False  # the disk is being deleted: no more drains

    # -- files ------------------------------------------------------------

    def load(self) -> None:
        path = self.directory / CHAIN_FILE
        try:
            manifest = ChainFile.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            manifest = ChainFile()
        except (OSError, ValueError) as exc:
            raise PoolIOError(f"cannot read {path}: {exc}") from exc
        base = self.overlay.load()
        if base is not None:
            # Pending regions preserve into `base`: a newer snapshot in chain.json is one
            # whose switch a crash cut short (a take drains the overlay before it switches).
            ids = [e.id for e in manifest.snapshots]
            keep_count = ids.index(base) + 1 if base in ids else (0 if base == "" else len(ids))
            if keep_count < len(ids):
                manifest = ChainFile(snapshots=manifest.snapshots[:keep_count])
                write_atomic(path, manifest.model_dump_json(indent=1).encode())
        self.snaps = [Snapshot(self.directory, entry) for entry in manifest.snapshots]
        keep = {CHAIN_FILE, DATA_FILE, MAP_FILE}
        keep |= {f"{e.id}{s}" for e in manifest.snapshots for s in (".delta", ".bitmap")}
        for leftover in self.directory.iterdir():
            if leftover.name not in keep:
                leftover.unlink(missing_ok=True)

    def save(self, snaps: list[Snapshot]) -> None:
        manifest = ChainFile(snapshots=[s.entry for s in snaps])
        write_atomic(self.directory / CHAIN_FILE, manifest.model_dump_json(indent=1).encode())

    def volume_fd(self) -> int:
        if self._volume_fd < 0:
            try:
                self._volume_fd = os.open(self.volume_path, os.O_RDONLY)
            except FileNotFoundError:
                raise VolumeNotFound(f"volume file {self.volume_path.name} not found") from None
        return self._volume_fd

    def volume_wfd(self) -> int:
        if self._volume_wfd < 0:
            try:
                self._volume_wfd = os.open(self.volume_path, os.O_RDWR)
            except FileNotFoundError:
                raise VolumeNotFound(f"volume file {self.volume_path.name} not found") from None
        return self._volume_wfd

    def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            self._drainer = None
        for snap in self.snaps:
            snap.close()
        self.overlay.close()
        for fd in (self._volume_fd, self._volume_wfd):
            if fd >= 0:
                os.close(fd)
        self._volume_fd = self._volume_wfd = -1

    def find(self, snapshot_id: str) -> Snapshot | None:
        return next((s for s in self.snaps if s.snapshot_id == snapshot_id), None)

    @property
    def newest(self) -> Snapshot | None:
        return self.snaps[-1] if self.snaps else None

    # -- the write path ----------------------------------------------------

    @property
    def live(self) -> bool:
        """Writes must ask the chain (it has snapshots, or regions pending in the overlay)."""
        return bool(self.snaps) or bool(self.overlay.pending)

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview,
        pwrite: Callable[[int, bytes | bytearray | memoryview], None],
    ) -> None:  # fmt: skip
        """A user write: into the overlay (a region to preserve or pending), else `pwrite`
        to the disk file once its regions are preserved (the overlay full: the copy first).

        The choice and the pwrite are one synchronous step: no region becomes pending
        between them."""
        length = len(data)
        while True:
            if self._hold is not None:
                await self._hold.wait()
                continue
            if self._to_overlay(offset, length):
                self.overlay.put(self.volume_fd(), offset, data)
                self._last_write = asyncio.get_running_loop().time()
                return
            newest = self.newest
            if not to_preserve(None if newest is None else newest.layer, offset, length):
                pwrite(offset, data)
                return
            await self.preserve(offset, length)

    def _to_overlay(self, offset: int, length: int) -> bool:
        overlay = self.overlay
        if overlay.any_pending(offset, length):
            return True
        newest = self.newest
        if newest is None or not to_preserve(newest.layer, offset, length):
            return False
        count = len(regions_of(offset, length))
        if not overlay.has_room(count):
            return False
        if not overlay.pending:
            overlay.begin(newest.snapshot_id)
        self._kick()
        return True

    async def direct(self, offset: int, length: int) -> bool:
        """Before a write-like change of the disk file itself (zeroing, trim): its regions
        preserved and none pending; False if some are pending (the caller writes through
        `write` instead, or skips an advisory trim). True means: change it now, in this step."""
        while True:
            if self._hold is not None:
                await self._hold.wait()
                continue
            if self.overlay.any_pending(offset, length):
                return False
            newest = self.newest
            if not to_preserve(None if newest is None else newest.layer, offset, length):
                return True
            await self.preserve(offset, length)

    def wants_overlay(self, offset: int, length: int) -> bool:
        """A write of the range would go to the overlay now."""
        if self.overlay.any_pending(offset, length):
            return True
        newest = self.newest
        return (
            newest is not None and bool(to_preserve(newest.layer, offset, length))
            and self.overlay.has_room(len(regions_of(offset, length)))
        )  # fmt: skip

    def read_live(self, buf: bytearray | memoryview, offset: int) -> None:
        """Synchronous: patch what the disk file gave for `offset` with the pending regions."""
        if self.overlay.pending:
            self.overlay.patch(buf, offset)

    def pending_ranges(self) -> list[tuple[int, int]]:
        return self.overlay.pending_ranges()

    # -- the drain -------------------------------------------------------------

    def _kick(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain_forever())

    def start(self) -> None:
        """In the event loop: drain what a killed process left pending."""
        if self.overlay.pending:
            self._kick()

    async def stop_draining(self) -> None:
        """Before the files are closed under it: no drain runs (nor its threads) from now."""
        self._closing = True
        async with self._drain_lock:
            pass

    async def _drain_forever(self) -> None:
        overlay, loop = self.overlay, asyncio.get_running_loop()
        since = loop.time()  # the oldest pending write is at most this old
        while overlay.pending and not self._closing:
            now = loop.time()
            wait = min(self._last_write + DRAIN_IDLE_S, since + DRAIN_EXPIRE_S) - now
            if wait > 0 and not overlay.budget.high:
                await asyncio.sleep(min(wait, 0.05))  # re-checks the budget meanwhile
                continue
            try:
                await self.drain(sorted(overlay.pending)[:DRAIN_BATCH_REGIONS])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next flush reports it to its client
                log.error("snapshots of %s: cannot drain the overlay: %s", self.volume_path.name, exc)
                await asyncio.sleep(1.0)

    async def drain(self, regions: Iterable[int] | None = None) -> None:
        """Until every region pending now (of `regions` only, if given) is in the disk file,
        its old content preserved (durable) first."""
        pending = self.overlay.pending
        if not pending:
            return
        todo = sorted(pending) if regions is None else sorted(r for r in regions if r in pending)
        while todo and not self._closing:
            async with self._drain_lock:
                batch = [r for r in todo[:DRAIN_BATCH_REGIONS] if r in pending]
                todo = todo[DRAIN_BATCH_REGIONS:]
                if batch:
                    await self._drain_batch(batch)

    async def _drain_batch(self, batch: list[int]) -> None:
        await self.preserve_regions(batch, threaded=True)
        overlay, wfd = self.overlay, self.volume_wfd()
        pending = overlay.pending
        for first, count in runs(batch):
            for step in range(first, first + count, COPY_STEP_REGIONS):
                n = min(first + count, step + COPY_STEP_REGIONS) - step
                # Only the drain clears regions and it holds the lock: all still pending.
                seqs = [pending[r] for r in range(step, step + n)]
                await asyncio.to_thread(overlay.copy_data, step, n, wfd)
                if any(pending[r] != seq for r, seq in zip(range(step, step + n), seqs, strict=True)):
                    overlay.copy_data(step, n, wfd)  # rewritten meanwhile: again, in this step
                overlay.clear(step, n)
        if not overlay.pending:
            overlay.reset()

    async def drain_for_instant(self) -> None:
        """Before a take's switch: drain while writes go on, then hold them (`release`)
        and drain what came meanwhile, so the overlay is empty at the switch."""
        await self.drain()
        self.hold()
        try:
            await self.drain()
        except BaseException:
            self.release()
            raise

    def hold(self) -> None:
        """Writes wait from now until `release` (a take's instant)."""
        if self._hold is None:
            self._hold = asyncio.Event()

    def release(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.set()

    async def preserve(self, offset: int, length: int) -> None:
        """Before a write of [offset, offset+length): preserve its regions into the newest snapshot."""
        await self.preserve_regions(regions_of(offset, length))

    async def preserve_regions(self, regions: Iterable[int], threaded: bool = False) -> None:
        """Preserve `regions` into the newest snapshot (`threaded`: copy in a thread; only
        for regions whose disk file nothing else writes meanwhile: pending ones)."""
        wanted = list(regions)
        while True:
            if self._frozen is not None:
                await self._frozen.wait()
                continue
            newest = self.newest
            if newest is None:
                return
            limit, preserved = newest.layer.region_count, newest.layer.preserved
            todo = [r for r in wanted if r < limit and r not in preserved]
            if not todo:
                return
            waits = [newest.inflight[r] for r in todo if r in newest.inflight]
            mine = [r for r in todo if r not in newest.inflight]
            if mine:
                await self._copy_regions(newest, mine, threaded)
            if waits:
                await asyncio.gather(*waits)

    async def _copy_regions(self, snap: Snapshot, regions: list[int], threaded: bool = False) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        for region in regions:
            snap.inflight[region] = done
        try:
            fd, size = self.volume_fd(), snap.layer.size_bytes

            def copy() -> list[int]:
                zero: list[int] = []
                for region in regions:
                    start = region * REGION_BYTES
                    data = pread_full(fd, start, min(REGION_BYTES, size - start))
                    if data.count(0) == len(data):
                        zero.append(region)  # recorded by a bit: the delta stays a hole there
                    else:
                        os.pwrite(snap.fd, data, start)  # recorded by its allocation
                return zero

            def copy_runs() -> list[int]:
                """The drain's batches: regions holding no data extent are recorded by their
                bit, the others copied whole in the kernel (a region's allocation is its record)."""
                zero: list[int] = []
                for first, count in runs(regions):
                    start = first * REGION_BYTES
                    stop = min((first + count) * REGION_BYTES, size)
                    extents = data_extents(fd, start, max(0, stop - start))
                    holding: set[int] = set()
                    for offset, length in extents:
                        holding.update(regions_of(offset, length))
                    for region in range(first, first + count):
                        lo = region * REGION_BYTES
                        if region not in holding or lo >= size:
                            zero.append(region)
                        else:
                            copy_range(fd, snap.fd, lo, min(REGION_BYTES, size - lo))
                return zero

            zero = await asyncio.to_thread(copy_runs) if threaded else copy()
            await record(snap, len(zero) < len(regions), zero)
            snap.layer.preserved.update(regions)
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(exc if isinstance(exc, Exception) else OSError("copy cancelled"))
            done.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        finally:
            for region in regions:
                if snap.inflight.get(region) is done:
                    del snap.inflight[region]

    # -- snapshots -----------------------------------------------------------

    async def take(self, snapshot_id: str) -> Snapshot:
        """Make `snapshot_id` the newest snapshot; an existing one is success."""
        await self.drain()  # while writes go on: little is left for the instant
        async with self.mutate:
            await self.wait_unfrozen()
            existing = self.find(snapshot_id)
            if existing is not None:
                return existing
            snap = await self.prepare(snapshot_id)
            try:
                await self.drain_for_instant()
            except BaseException:
                await self.discard_prepared(snap)
                raise
            self.snaps.append(snap)  # from here on, writes preserve into it
            self.release()
        await self.settle()
        return snap

    async def wait_unfrozen(self) -> None:
        """Under `mutate`: until no delete merges the newest away (it froze the drain's
        preservation, and only starts under `mutate`, so none starts after this)."""
        while self._frozen is not None:
            self.mutate.release()
            try:
                frozen = self._frozen
                if frozen is not None:
                    await frozen.wait()
            finally:
                await self.mutate.acquire()

    async def prepare(self, snapshot_id: str) -> Snapshot:
        """Under `mutate`: the snapshot's files, and `chain.json` naming it, before any
        write may preserve into it; the caller makes it the newest (`snaps.append`)."""
        size = os.stat(self.volume_path).st_size
        entry = ChainEntry(id=snapshot_id, size_bytes=size)
        snap = await asyncio.to_thread(self._create_files, entry)
        try:
            await asyncio.to_thread(self.save, [*self.snaps, snap])
        except BaseException:
            await asyncio.to_thread(snap.remove)
            raise
        return snap

    async def discard_prepared(self, snap: Snapshot) -> None:
        """Under `mutate`: forget a prepared snapshot that was never made the newest."""
        await asyncio.to_thread(self.save, self.snaps)
        await asyncio.to_thread(snap.remove)

    async def settle(self) -> None:
        """After a switch: what was acknowledged before it is durable in the disk file."""
        await asyncio.to_thread(os.fdatasync, self.volume_fd())

    def _create_files(self, entry: ChainEntry) -> Snapshot:
        self.directory.mkdir(parents=True, exist_ok=True)
        snap = Snapshot(self.directory, entry)
        os.ftruncate(snap.fd, entry.size_bytes)
        os.fsync(snap.fd)
        fsync_dir(self.directory)  # both files exist (the bitmap empty) before chain.json names them
        return snap

    async def delete(self, snapshot_id: str) -> None:
        """Merge the snapshot into its older neighbour and remove it; absent is success."""
        async with self.deletes:
            await self._delete(snapshot_id)

    async def _delete(self, snapshot_id: str) -> None:
        # While the newest is merged away the drain cannot preserve (a FLUSH would wait
        # for the merge): drain first, so only the writes during the merge are pending.
        await self.drain()
        async with self.mutate:
            snap = self.find(snapshot_id)
            if snap is None:
                return
            snap.deleting = True
            frozen = None
            if snap is self.newest:
                frozen = self._frozen = asyncio.Event()
        try:
            if snap.inflight:
                await asyncio.gather(*set(snap.inflight.values()), return_exceptions=True)
            while self.readers:
                self.readers_done.clear()
                await self.readers_done.wait()
            await self._merge_into_older(snap)
            async with self.mutate:
                remaining = [s for s in self.snaps if s is not snap]
                await asyncio.to_thread(self.save, remaining)
                self.snaps = remaining
                if self.overlay.base == snap.snapshot_id:
                    self.overlay.rebase(remaining[-1].snapshot_id if remaining else "")
            await asyncio.to_thread(snap.remove)
        finally:
            snap.deleting = False
            if frozen is not None:
                frozen.set()
                self._frozen = None

    async def _merge_into_older(self, snap: Snapshot) -> None:
        index = self.snaps.index(snap)
        regions = merge_on_delete([s.layer for s in self.snaps], index)
        if not regions:
            return
        older = self.snaps[index - 1]

        def copy() -> list[int]:
            zero = []
            for region in regions:  # in disk order
                start = region * REGION_BYTES
                data = pread_full(snap.fd, start, min(REGION_BYTES, older.layer.size_bytes - start))
                if data.count(0) == len(data):
                    zero.append(region)
                else:
                    os.pwrite(older.fd, data, start)
            return zero

        zero = await asyncio.to_thread(copy)
        await record(older, len(zero) < len(regions), zero)
        older.layer.preserved |= regions

    # -- reads ---------------------------------------------------------------

    def read(self, snap: Snapshot, offset: int, length: int, recheck: bool = False) -> bytes:
        """`length` bytes of the snapshot's view from `offset` (zeroes past its size).

        With `recheck` (a reader in another thread), a live piece is read
        again from the delta that preserved it meanwhile."""
        snaps = list(self.snaps)
        index = snaps.index(snap)
        out = bytearray()
        for source, start, size in plan_read([s.layer for s in snaps], index, offset, length):
            if source != LIVE:
                out += pread_full(snaps[source].fd, start, size)
                continue
            piece = bytearray(pread_full(self.volume_fd(), start, size))
            if recheck:
                self._reread_preserved(snap, piece, start)
            out += piece
        out += bytes(length - len(out))
        return bytes(out)

    def _reread_preserved(self, snap: Snapshot, piece: bytearray, start: int) -> None:
        snaps = list(self.snaps)
        layers, index = [s.layer for s in snaps], snaps.index(snap)
        for region in regions_of(start, len(piece)):
            source = source_of(layers, index, region)
            if source == LIVE:
                continue
            lo = max(start, region * REGION_BYTES)
            hi = min(start + len(piece), (region + 1) * REGION_BYTES)
            piece[lo - start : hi - start] = pread_full(snaps[source].fd, lo, hi - lo)

    def drop(self) -> None:
        """Close everything and remove the chain's directory (the disk is being deleted)."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.snaps = []


def chain_directory(pool_root: Path, volume_id: str) -> Path:
    return Path(pool_root) / SNAPSHOTS_DIR / validate_volume_id(volume_id)
