"""The NBD exports of disks with snapshots.

`CowFileExport` is a disk's file export with the copy-before-write hook (a
disk without snapshots pays one dict lookup per write); `SnapshotExport`
serves one snapshot read-only.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from pathlib import Path

from openevs.agent.nbd.export import FileExport
from openevs.agent.snapshot_chain import regions_of
from openevs.agent.snapshots import Snapshot, VolumeChain

_ZERO_CHUNK_BYTES = 1 << 20


class CowFileExport(FileExport):
    """A disk's file export whose writes first preserve what its newest snapshot needs.

    A write to a region to preserve goes to the chain's overlay (snapshot_overlay.py)
    and is acknowledged at once; reads and extents see the overlay's pending regions;
    FLUSH and FUA drain them first. `fileno` (sendfile) would bypass the overlay: the
    server only sees this export wrapped (`MirroredExport`, which offers none)."""

    def __init__(
        self, path: Path, read_only: bool, chains: Mapping[str, VolumeChain], volume_id: str
    ) -> None:
        super().__init__(path, read_only)
        self._chains = chains  # the store's, kept current
        self._volume_id = volume_id

    def _live(self) -> VolumeChain | None:
        chain = self._chains.get(self._volume_id)
        return chain if chain is not None and chain.live else None

    def pread(self, offset: int, length: int) -> bytes:
        data = super().pread(offset, length)
        chain = self._chains.get(self._volume_id)
        if chain is None or not chain.overlay.any_pending(offset, length):
            return data
        buf = bytearray(data)
        chain.read_live(buf, offset)
        return bytes(buf)

    def readinto(self, offset: int, buf: memoryview) -> None:
        super().readinto(offset, buf)
        chain = self._chains.get(self._volume_id)
        if chain is not None and chain.overlay.any_pending(offset, len(buf)):
            chain.read_live(buf, offset)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        base = super().extents(offset, length)
        chain = self._chains.get(self._volume_id)
        if chain is None or not chain.overlay.any_pending(offset, length):
            return base
        covered = sum(n for n, _ in base)
        return chain.overlay.extents(base, offset, covered)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        chain = self._live()
        if chain is None:
            self._pwrite_all(offset, data)
        else:
            await chain.write(offset, data, self._pwrite_all)
        if fua:
            await self._durable(offset, len(data))

    async def _durable(self, offset: int, length: int) -> None:
        """FUA: this range's pending regions drained, then the disk file synced."""
        chain = self._chains.get(self._volume_id)
        if chain is not None and chain.overlay.pending:
            await chain.drain(regions_of(offset, length))
        await super().flush()

    async def write_zeroes(
        self, offset: int, length: int, fua: bool, may_trim: bool, fast_only: bool = False
    ) -> None:
        chain = self._live()
        via_overlay = chain is not None and (
            chain.wants_overlay(offset, length) or not await chain.direct(offset, length)
        )
        if chain is not None and via_overlay:
            if fast_only:
                raise OSError(errno.EOPNOTSUPP, "no fast way to zero this range (pending in the overlay)")
            await self._zero_through(chain, offset, length)
        else:
            await super().write_zeroes(offset, length, False, may_trim, fast_only)
        if fua:
            await self._durable(offset, length)

    async def _zero_through(self, chain: VolumeChain, offset: int, length: int) -> None:
        zeros = memoryview(bytes(min(length, _ZERO_CHUNK_BYTES)))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            await chain.write(offset, zeros[:n], self._pwrite_all)
            offset += n

    async def trim(self, offset: int, length: int) -> None:
        chain = self._live()
        if chain is not None and not await chain.direct(offset, length):
            return  # advisory: pending regions keep their bytes
        await super().trim(offset, length)

    async def flush(self) -> None:
        chain = self._chains.get(self._volume_id)
        if chain is not None and chain.overlay.pending:
            await chain.drain()
        await super().flush()


class SnapshotExport:
    """One snapshot as a read-only NBD export (reads in the event loop: never torn)."""

    eager_writes = True

    def __init__(self, chain: VolumeChain, snap: Snapshot) -> None:
        self._chain = chain
        self._snap = snap

    @property
    def size_bytes(self) -> int:
        return self._snap.layer.size_bytes

    @property
    def read_only(self) -> bool:
        return True

    def pread(self, offset: int, length: int) -> bytes:
        return self._chain.read(self._snap, offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        raise OSError(errno.EROFS, "a snapshot is read-only")

    async def write_zeroes(
        self, offset: int, length: int, fua: bool, may_trim: bool, fast_only: bool = False
    ) -> None:
        raise OSError(errno.EROFS, "a snapshot is read-only")

    async def trim(self, offset: int, length: int) -> None:
        raise OSError(errno.EROFS, "a snapshot is read-only")

    async def flush(self) -> None:
        return None

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [(length, 0)]
