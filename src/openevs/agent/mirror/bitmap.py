"""The persistent dirty bitmap of one volume: `<pool>/<volume_id>.bitmap`.

One bit per region (engine.REGION_BYTES). The file is sparse and only the
bytes holding set bits are ever written, so a 64 TiB volume with three dirty
regions costs three bytes of disk and three set entries of memory; loading
walks the file's data extents (SEEK_DATA), not its length.

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
from collections.abc import Callable, Iterable
from pathlib import Path
from time import perf_counter

from openevs.agent.mirror.stats import MIRROR_STATS
from openevs.agent.pool import data_extents, fsync_dir


class BitmapFile:
    """The on-disk bits. `desired(region)` tells, when a byte is rewritten, which bits it holds."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = -1  # opened at the first write (or load of a file with bits)
        self._created = False  # created since the last sync: its name needs a directory fsync
        self.on_disk: set[int] = set()  # regions whose bit is set in the file
        self._sync_lock = asyncio.Lock()
        self._generation = 0  # bumped by every pwrite
        self._synced = 0  # generation known durable

    def _open(self) -> int:
        if self._fd < 0:
            existed = self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._created = self._created or not existed
        return self._fd

    def load(self) -> set[int]:
        """Every region whose bit is set in the file."""
        regions: set[int] = set()
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        if not size:
            self.on_disk = set()
            return regions
        fd = self._open()
        for offset, length in data_extents(fd, 0, size):
            data = os.pread(fd, length, offset)
            for i, byte in enumerate(data):
                if byte:
                    base = (offset + i) * 8
                    regions.update(base + bit for bit in range(8) if byte >> bit & 1)
        self.on_disk = set(regions)
        return regions

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def _write_bytes(
        self, byte_indexes: Iterable[int], add: set[int], drop: set[int]
    ) -> None:
        """Rewrite the given bitmap bytes: on-disk bits plus `add`, minus `drop`.

        Runs of consecutive bytes go out in one pwrite each."""
        on_disk = self.on_disk
        indexes = sorted(set(byte_indexes))
        i = 0
        while i < len(indexes):
            j = i + 1
            while j < len(indexes) and indexes[j] == indexes[j - 1] + 1:
                j += 1
            values = bytearray(j - i)
            for k in range(i, j):
                value = 0
                base = indexes[k] * 8
                for bit in range(8):
                    region = base + bit
                    if region in add or (region in on_disk and region not in drop):
                        value |= 1 << bit
                values[k - i] = value
            os.pwrite(self._open(), values, indexes[i])
            for k in range(i, j):
                value = values[k - i]
                base = indexes[k] * 8
                for bit in range(8):
                    if value >> bit & 1:
                        on_disk.add(base + bit)
                    else:
                        on_disk.discard(base + bit)
            i = j
        self._generation += 1

    def set_now(self, regions: Iterable[int]) -> bool:
        """pwrite the bits of `regions` not yet on disk; True if any byte was written.

        Synchronous and cheap (page cache); `await sync()` makes it durable.
        """
        new = [r for r in regions if r not in self.on_disk]
        if not new:
            return False
        self._write_bytes((r // 8 for r in new), set(new), set())
        return True

    def clear_now(self, regions: Iterable[int], keep: Callable[[int], bool]) -> None:
        """Clear the bits of `regions` for which `keep(region)` is false (no sync: lazy)."""
        drop = [r for r in regions if r in self.on_disk and not keep(r)]
        if not drop:
            return
        self._write_bytes((r // 8 for r in drop), set(), set(drop))

    def clear_all(self) -> None:
        if self._fd >= 0 or self.path.exists():
            os.ftruncate(self._open(), 0)
            self._generation += 1
        self.on_disk.clear()

    async def sync(self) -> None:
        """Make every pwrite done before this call durable (shared fdatasync)."""
        target = self._generation
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
