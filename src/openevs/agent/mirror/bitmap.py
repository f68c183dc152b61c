"""The persistent dirty bitmap of one volume: `<pool>/<volume_id>.bitmap`.

One bit per region (engine.REGION_BYTES). The file is sparse and only the
bytes holding set bits are ever written, so a 64 TiB volume with three dirty
regions costs three bytes of disk, and a fully dirty 32 TiB one 64 MiB;
loading walks the file's data extents (SEEK_DATA), not its length. In
memory the bits are a region set (regions.py): runs cost next to nothing,
scattered bits at most one bit each. The format is the one the agent always
wrote (a file of an older agent loads as it is).

A bit on disk means "this region may differ from the peer": it is set for
every dirty region AND for every region the activity log holds hot (writes
being forwarded there). `persist(regions)` makes newly set bits durable
(pwrite + fdatasync) before it returns; concurrent callers share one
fdatasync (group commit). Clearing is lazy: a cleared bit that did not
reach the disk before a crash only costs a resync of that region.

The file is opened (and created) only when a bit is first written, so a
replica that never had a dirty region holds no descriptor for it; the sync
after a creation also fsyncs the pool directory, so the file's name is as
durable as its bits.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterable
from pathlib import Path
from time import perf_counter

from openevs.agent.mirror.regions import BitMap, add_bitmap_bytes, as_regions, bitmap_bytes, runs, span
from openevs.agent.mirror.stats import MIRROR_STATS
from openevs.agent.pool import data_extents, fsync_dir

LOAD_BYTES = 1 << 20  # bitmap bytes read or written at a time (8 Mi regions, 512 GiB of disk)


class BitmapFile:
    """The on-disk bits. `desired(region)` tells, when a byte is rewritten, which bits it holds."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = -1  # opened at the first write (or load of a file with bits)
        self._created = False  # created since the last sync: its name needs a directory fsync
        self.on_disk = BitMap()  # regions whose bit is set in the file
        self._sync_lock = asyncio.Lock()
        self._generation = 0  # bumped by every pwrite
        # generation of the last write that must be durable when sync() returns (set
        # bits, clear_all); a lazy clear_now needs no fdatasync of its own
        self._wanted = 0
        self._synced = 0  # generation known durable

    def _open(self) -> int:
        if self._fd < 0:
            existed = self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._created = self._created or not existed
        return self._fd

    def load(self) -> BitMap:
        """Every region whose bit is set in the file (read LOAD_BYTES at a time)."""
        regions = BitMap()
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        if size:
            fd = self._open()
            for offset, length in data_extents(fd, 0, size):
                for pos in range(offset, offset + length, LOAD_BYTES):
                    add_bitmap_bytes(regions, os.pread(fd, min(LOAD_BYTES, offset + length - pos), pos), pos)
        regions.run_optimize()
        self.on_disk = regions.copy()
        return regions

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def _write(self, changed: BitMap, add: BitMap, drop: BitMap) -> None:
        """Rewrite the bitmap bytes holding the bits of `changed`: on-disk bits plus
        `add`, minus `drop`. Runs of consecutive bytes go out in pwrites of at most
        LOAD_BYTES; `on_disk` follows each pwrite that succeeded (never before it)."""
        for run in runs(changed):
            first_byte, end_byte = run.start // 8, -(-run.stop // 8)
            for pos in range(first_byte, end_byte, LOAD_BYTES):
                count = min(LOAD_BYTES, end_byte - pos)
                window = span(pos * 8, (pos + count) * 8)
                wanted = (self.on_disk & window) | (add & window)
                wanted -= drop
                os.pwrite(self._open(), bitmap_bytes(wanted, pos, count), pos)
                self.on_disk.remove_range(pos * 8, (pos + count) * 8)
                self.on_disk |= wanted
        self._generation += 1

    def set_now(self, regions: Iterable[int]) -> bool:
        """pwrite the bits of `regions` not yet on disk; True if any byte was written.

        Synchronous and cheap (page cache); `await sync()` makes it durable.
        """
        new = as_regions(regions) - self.on_disk
        if not new:
            return False
        self._write(new, new, BitMap())
        self._wanted = self._generation
        return True

    def clear_now(self, regions: Iterable[int], keep: Iterable[BitMap]) -> None:
        """Clear the bits of `regions` that are in none of the `keep` sets (no sync: lazy)."""
        drop = as_regions(regions) & self.on_disk
        for kept in keep:
            if not drop:
                return
            drop -= kept
        if drop:
            self._write(drop, BitMap(), drop)

    def clear_all(self) -> None:
        if self._fd >= 0 or self.path.exists():
            os.ftruncate(self._open(), 0)
            self._generation += 1
            self._wanted = self._generation
        self.on_disk.clear()

    async def sync(self) -> None:
        """Make every set bit (and clear_all) done before this call durable (shared
        fdatasync); lazy clears ride along with the next one."""
        target = self._wanted
        if self._synced >= target:
            return
        async with self._sync_lock:
            if self._synced >= target:
                return  # another caller's fdatasync covered us
            current = self._generation
            started = perf_counter()
            created, self._created = self._created, False
            try:
                await asyncio.to_thread(self._durable, self._fd, created)
            except BaseException:
                self._created = self._created or created
                raise
            MIRROR_STATS.bitmap_sync.observe(0, perf_counter() - started)
            self._synced = max(self._synced, current)

    def _durable(self, fd: int, created: bool) -> None:
        os.fdatasync(fd)
        if created:
            fsync_dir(self.path.parent)


def bitmap_error(exc: OSError) -> bool:
    """True when an OSError means the bitmap's storage failed (not a bug)."""
    return exc.errno in (errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS)
