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
from openevs.agent.snapshots import Snapshot, VolumeChain


class CowFileExport(FileExport):
    """A disk's file export whose writes first preserve what its newest snapshot needs."""

    def __init__(
        self, path: Path, read_only: bool, chains: Mapping[str, VolumeChain], volume_id: str
    ) -> None:
        super().__init__(path, read_only)
        self._chains = chains  # the store's, kept current
        self._volume_id = volume_id

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        chain = self._chains.get(self._volume_id)
        if chain is not None and chain.snaps:
            await chain.preserve(offset, len(data))
        self._pwrite_all(offset, data)
        if fua:
            await self.flush()

    async def write_zeroes(
        self, offset: int, length: int, fua: bool, may_trim: bool, fast_only: bool = False
    ) -> None:
        chain = self._chains.get(self._volume_id)
        if chain is not None and chain.snaps:
            await chain.preserve(offset, length)
        await super().write_zeroes(offset, length, fua, may_trim, fast_only)

    async def trim(self, offset: int, length: int) -> None:
        chain = self._chains.get(self._volume_id)
        if chain is not None and chain.snaps:
            await chain.preserve(offset, length)
        await super().trim(offset, length)


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
