"""Two real agent processes on loopback, paired through their control APIs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from openevs.agent.nbd.client import NbdClient
from openevs.contract import Arbiter, Peer, ReplicationRequest, ReplicationState
from openevs.domain.replication import Role
from tests.conftest import free_port
from tests.integration.agent.support import AgentProcess
from tests.support.waiting import wait_for

MiB = 1 << 20


class PairedAgent(AgentProcess):
    """An agent whose NBD port stays the same across restarts (the peer reconnects)."""

    def __init__(self, root: Path, az: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root, az)
        self.nbd_port = free_port()

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--nbd") + 1] = f"127.0.0.1:{self.nbd_port}"
        return cmd

    def peer(self, export: str) -> Peer:
        return Peer(host="127.0.0.1", port=self.nbd_port, export=export)

    def state(self, volume_id: str) -> ReplicationState:
        return self.client.get_replication(volume_id)

    def wait_status(self, volume_id: str, status: str, timeout_s: float = 20.0) -> ReplicationState:
        def check() -> ReplicationState | None:
            state = self.state(volume_id)
            return state if state.replication_status == status else None

        try:
            return wait_for(f"{volume_id} {status}", check, timeout_s)
        except AssertionError:
            raise AssertionError(f"{volume_id} not {status}: {self.state(volume_id)}") from None

    def image(self, volume_id: str) -> Path:
        return self.pool / f"{volume_id}.img"

    def checksum(self, volume_id: str) -> str:
        return checksum(self.image(volume_id))


def checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def pair(
    primary: PairedAgent, secondary: PairedAgent, volume: str, dr_volume: str, *,
    epoch: int = 1, link: str = "link-secret-1", group_id: str | None = None,
    initial_sync: bool = True, arbiter: Arbiter | None = None,
) -> None:  # fmt: skip
    """Configure the DR volume as secondary first, then the production volume as primary."""
    secondary.client.set_replication(
        dr_volume,
        ReplicationRequest(role=Role.SECONDARY, epoch=epoch, pair_id=f"p-{volume}", group_id=group_id,
                           link_export=link, initial_sync=initial_sync),
    )  # fmt: skip
    primary.client.set_replication(
        volume,
        ReplicationRequest(role=Role.PRIMARY, epoch=epoch, pair_id=f"p-{volume}", group_id=group_id,
                           peer=secondary.peer(link), mirroring=True, initial_sync=initial_sync,
                           arbiter=arbiter),
    )  # fmt: skip


def group_of_pairs(primary: PairedAgent, secondary: PairedAgent, volumes: Iterable[str],
                   size_bytes: int, group_id: str = "g1") -> None:  # fmt: skip
    """Each volume paired with `<volume>-dr` in one group (exported as `att-<volume>`), all active."""
    volumes = list(volumes)
    for vol in volumes:
        primary.client.create_volume(vol, size_bytes)
        secondary.client.create_volume(f"{vol}-dr", size_bytes)
        primary.client.grant_export(f"att-{vol}", vol, False)
        pair(primary, secondary, vol, f"{vol}-dr", link=f"link-{vol}", group_id=group_id)
    for vol in volumes:
        primary.wait_status(vol, "active", timeout_s=60)


async def connect(agent: PairedAgent, export: str) -> NbdClient:
    return await NbdClient.connect("127.0.0.1", agent.nbd_port, export)


async def write_blocks(
    client: NbdClient, offsets: Iterable[int], size: int, seed: int = 0
) -> int:
    """Write `size` random bytes at every offset, 8 in flight; returns the bytes written."""
    sem = asyncio.Semaphore(8)
    total = 0

    async def one(offset: int) -> None:
        nonlocal total
        async with sem:
            await client.write(offset, os.urandom(size))
            total += size

    await asyncio.gather(*(one(o) for o in offsets))
    return total


# Ordered records across the members of a group: record i of the first disk is
# acknowledged before record i of the second, which is acknowledged before
# record i+1 of the first (`ordered_record`); a crash-consistent point of the
# group holds a prefix of that order (`assert_one_point`).
RECORD = 4096


def ordered_record(i: int) -> bytes:
    return struct.pack(">Q", i + 1).ljust(RECORD, b"\0")


def records_found(data: bytes, records: int) -> set[int]:
    """Sequence numbers found in a member's record slots."""
    found = set()
    for i in range(records):
        (value,) = struct.unpack_from(">Q", data, i * RECORD)
        if value == i + 1:
            found.add(i)
    return found


def assert_one_point(first: set[int], second: set[int]) -> None:
    """The two members hold one point in time of the ordered records: no record
    of the second without the same record of the first, no record i+1 of the
    first without record i of the second, and no hole in either."""
    assert first == set(range(len(first))), "a hole in the first member's records"
    assert second == set(range(len(second))), "a hole in the second member's records"
    assert second <= first
    assert len(first) - len(second) <= 1, (len(first), len(second))
