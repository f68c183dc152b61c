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
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from time import perf_counter

from openevs.agent.mirror.stats import MIRROR_STATS
from openevs.agent.pool import data_extents


class BitmapFile:
    """The on-disk bits. `desired(region)` tells, when a byte is rewritten, which bits it holds."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.on_disk: set[int] = set()  # regions whose bit is set in the file
        self._sync_lock = asyncio.Lock()
        self._generation = 0  # bumped by every pwrite
        self._synced = 0  # generation known durable

    def load(self) -> set[int]:
        """Every region whose bit is set in the file."""
        regions: set[int] = set()
        for offset, length in data_extents(self._fd, 0, os.fstat(self._fd).st_size):
            data = os.pread(self._fd, length, offset)
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
            os.pwrite(self._fd, values, indexes[i])
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
        os.ftruncate(self._fd, 0)
        self.on_disk.clear()
        self._generation += 1

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
            await asyncio.to_thread(os.fdatasync, self._fd)
            MIRROR_STATS.bitmap_sync.observe(0, perf_counter() - started)
            self._synced = max(self._synced, current)


def bitmap_error(exc: OSError) -> bool:
    """True when an OSError means the bitmap's storage failed (not a bug)."""
    return exc.errno in (errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS)
