"""`MirroredExport`: a volume's user export as the NBD server sees it.

It wraps the volume's shared `FileExport`. Reads and extent queries go
straight to the file. Writes go to the volume's `Replica` if the volume is
replicated (writes.py): write locally only, write locally and on the peer
before the reply, wait for a copy, or refuse (EPERM on a secondary or a
fenced primary). The role is looked up per request, so a role change takes
effect on connections that are already open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

from openevs.agent.mirror.link import PeerLink
from openevs.agent.mirror.replica import Replica
from openevs.agent.nbd.export import FileExport
from openevs.domain.replication import Role


class MirroredExport:
    # The NBD server runs its writes with no Task (nbd/eager.py): nothing on the write
    # path needs a current task (no asyncio.timeout(); Changes.wait uses a timer).
    eager_writes = True

    def __init__(self, replicas: Mapping[str, Replica], volume_id: str, inner: FileExport) -> None:
        self._replicas = replicas  # the manager's, kept current: looked up per request
        self._volume_id = volume_id
        self.inner = inner

    @property
    def size_bytes(self) -> int:
        return self.inner.size_bytes

    @property
    def read_only(self) -> bool:
        replica = self._replicas.get(self._volume_id)
        return self.inner.read_only or (replica is not None and replica.state.role is Role.SECONDARY)

    def pread(self, offset: int, length: int) -> bytes:
        return self.inner.pread(offset, length)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        return self.inner.extents(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        inner = self.inner
        replica = self._replicas.get(self._volume_id)
        if replica is None:
            await inner.write(offset, data, fua)
            return

        async def local(f: bool) -> None:
            await inner.write(offset, data, f)

        def forward(link: PeerLink) -> Awaitable[object]:
            # Sent now, no task: `data` stays ours until the peer answered (the
            # replica awaits the answer before this write returns).
            return link.start_write(offset, data, fua)

        await replica.user_io(offset, len(data), local, forward, fua)

    async def write_zeroes(
        self, offset: int, length: int, fua: bool, may_trim: bool, fast_only: bool = False
    ) -> None:
        inner = self.inner
        replica = self._replicas.get(self._volume_id)
        if replica is None:
            await inner.write_zeroes(offset, length, fua, may_trim, fast_only)
            return

        async def local(f: bool) -> None:
            await inner.write_zeroes(offset, length, f, may_trim, fast_only)

        async def forward(link: PeerLink) -> None:
            await link.write_zeroes(offset, length, fua)

        await replica.user_io(offset, length, local, forward, fua)

    async def trim(self, offset: int, length: int) -> None:
        inner = self.inner
        replica = self._replicas.get(self._volume_id)
        if replica is None:
            await inner.trim(offset, length)
            return

        async def local(_f: bool) -> None:
            await inner.trim(offset, length)

        async def forward(link: PeerLink) -> None:
            await link.trim(offset, length)

        await replica.user_io(offset, length, local, forward, False)

    async def flush(self) -> None:
        replica = self._replicas.get(self._volume_id)
        if replica is None:
            await self.inner.flush()
        else:
            await replica.user_flush(self.inner.flush)
