"""A replication pair between two real agent processes: copy, mirror, outage, resync."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from openevs.agent.nbd.errors import NbdError
from openevs.contract import AgentRequestFailed, ReplicationRequest
from openevs.domain.replication import Role
from tests.integration.mirror.support import MiB, PairedAgent, connect, pair, write_blocks
from tests.support.waiting import wait_for

EPERM = 1
R = 64 * 1024


def test_initial_copy_then_synchronous_mirroring(agents: tuple[PairedAgent, PairedAgent]) -> None:
    a, b = agents
    a.client.create_volume("vol", 64 * MiB)
    b.client.create_volume("dr", 64 * MiB)
    a.client.grant_export("att", "vol", False)
    b.client.create_volume("dr", 64 * MiB)
    b.image("dr").write_bytes(b"\xee" * MiB)  # old content of the DR disk: discarded
    os.truncate(b.image("dr"), 64 * MiB)

    async def before() -> None:
        async with await connect(a, "att") as nbd:
            await write_blocks(nbd, range(0, 64 * MiB, 5 * MiB), 700 * 1024)

    asyncio.run(before())
    pair(a, b, "vol", "dr")
    state = a.wait_status("vol", "active")
    assert state.link_up and state.dirty_bytes == 0 and state.sync is None
    assert 0 < state.resynced_bytes_total <= 13 * MiB  # data extents only, not 64 MiB

    async def after() -> None:
        async with await connect(a, "att") as nbd:
            await write_blocks(nbd, range(3 * MiB + 17, 60 * MiB, 3 * MiB), 100_000)
            await nbd.write_zeroes(10 * MiB, MiB)
            await nbd.trim(20 * MiB, 2 * MiB)
            await nbd.write(MiB, b"fua" * 1000, fua=True)
            await nbd.flush()

    asyncio.run(after())
    assert a.state("vol").replication_status == "active"
    assert a.checksum("vol") == b.checksum("dr")

    # The DR disk is read-only to users, whatever the grant says.
    b.client.grant_export("dr-ro", "dr", True)
    b.client.grant_export("dr-rw", "dr", False)

    async def on_dr() -> None:
        async with await connect(b, "dr-ro") as nbd:
            assert nbd.read_only
            assert await nbd.read(MiB, 3000) == (b"fua" * 1000)
        async with await connect(b, "dr-rw") as nbd:
            assert nbd.read_only
            with pytest.raises(NbdError) as refused:
                await nbd.request_raw(1, 0, 512, 0, bytes(512))  # NBD_CMD_WRITE
            assert refused.value.errno == EPERM

    asyncio.run(on_dr())
    assert b.state("dr").role == "secondary"

    # Same config again: a no-op; an older epoch: refused.
    pair(a, b, "vol", "dr")
    assert a.state("vol").replication_status == "active"
    with pytest.raises(AgentRequestFailed) as stale:
        a.client.set_replication(
            "vol", ReplicationRequest(role=Role.PRIMARY, epoch=0, peer=b.peer("link-secret-1"))
        )
    assert stale.value.status == 409 and stale.value.reason == "stale_epoch"

    # Back to standalone: the DR disk is writable again, its link export is gone.
    a.client.delete_replication("vol")
    b.client.delete_replication("dr")
    assert a.state("vol").role == "standalone"

    async def standalone() -> None:
        async with await connect(b, "dr-rw") as nbd:
            assert not nbd.read_only
            await nbd.write(0, b"x" * 512)
        with pytest.raises(Exception):  # noqa: B017 - export not found
            await connect(b, "link-secret-1")

    asyncio.run(standalone())


def test_link_loss_marks_dirty_and_resync_copies_only_that(
    agents: tuple[PairedAgent, PairedAgent],
) -> None:
    a, b = agents
    a.client.create_volume("vol", 128 * MiB)
    b.client.create_volume("dr", 128 * MiB)
    a.client.grant_export("att", "vol", False)
    pair(a, b, "vol", "dr")
    a.wait_status("vol", "active")
    outage_offsets = range(32 * MiB, 32 * MiB + 400 * R, 2 * R)  # 200 distinct regions

    async def workload() -> int:
        async with await connect(a, "att") as nbd:
            await write_blocks(nbd, range(0, MiB, R), R)  # one hot extent, mirrored
            b.kill()  # the link breaks under a write workload
            written = await write_blocks(nbd, outage_offsets, R)  # every write still succeeds
            await nbd.flush()
            return written

    written = asyncio.run(workload())
    state = a.wait_status("vol", "inactive")
    assert not state.link_up
    dirty = state.dirty_bytes
    # The outage's writes, plus what the peer had received but not flushed when the
    # link broke (it may not be durable there): the 1 MiB written before the kill.
    assert written <= dirty <= written + 2 * MiB
    before = state.resynced_bytes_total

    started = time.monotonic()
    b.start()  # same pool, same NBD address: the primary reconnects by itself
    state = a.wait_status("vol", "active", timeout_s=30)
    resynced = state.resynced_bytes_total - before
    print(f"\noutage: written {written} B, dirty {dirty} B, resynced {resynced} B"
          f" in {time.monotonic() - started:.2f} s")  # fmt: skip
    assert resynced == dirty
    assert a.checksum("vol") == b.checksum("dr")


def test_pause_and_resume(agents: tuple[PairedAgent, PairedAgent]) -> None:
    a, b = agents
    a.client.create_volume("vol", 32 * MiB)
    b.client.create_volume("dr", 32 * MiB)
    a.client.grant_export("att", "vol", False)
    pair(a, b, "vol", "dr")
    a.wait_status("vol", "active")

    async def write(offsets: range) -> None:
        async with await connect(a, "att") as nbd:
            await write_blocks(nbd, offsets, R)

    asyncio.run(write(range(16 * MiB, 24 * MiB, R)))  # mirrored: its extents are hot
    state = a.client.pause_replication("vol")
    # Paused right after writes: the peer was flushed, nothing differs.
    assert state.replication_status == "active-stopped" and not state.mirroring
    asyncio.run(write(range(0, 8 * MiB, MiB)))
    state = a.state("vol")
    assert state.replication_status == "inactive" and state.dirty_bytes == 8 * R
    assert [tuple(r) for r in a.client.get_replication_dirty("vol").ranges] == [
        (i * MiB, R) for i in range(8)
    ]
    before = state.resynced_bytes_total
    a.client.resume_replication("vol")
    state = a.wait_status("vol", "active")
    assert state.resynced_bytes_total - before == 8 * R
    assert a.checksum("vol") == b.checksum("dr")


def test_volumes_grow_while_paired(agents: tuple[PairedAgent, PairedAgent]) -> None:
    a, b = agents
    a.client.create_volume("vol", 8 * MiB)
    b.client.create_volume("dr", 8 * MiB)
    a.client.grant_export("att", "vol", False)
    pair(a, b, "vol", "dr")
    a.wait_status("vol", "active")
    b.client.grow_volume("dr", 16 * MiB)  # the DR disk first, then production
    a.client.grow_volume("vol", 16 * MiB)

    async def write() -> None:
        async with await connect(a, "att") as nbd:  # a new connection sees the new size
            assert nbd.size_bytes == 16 * MiB
            await nbd.write(12 * MiB, b"g" * R)

    asyncio.run(write())
    wait_for("mirrored", lambda: a.state("vol").replication_status == "active")
    assert a.checksum("vol") == b.checksum("dr")
    a.client.delete_volume("vol")  # deleting a volume drops its replication state
    assert not list(a.pool.glob("vol.*"))
