"""A snapshot taken while writes go on over NBD is crash-consistent: every write
acknowledged before the snapshot is in it, none started after it returned.

The agent runs in this process (StorageNode with its real NBD server); the
writers are real NBD clients over loopback. Each writer owns its blocks and
writes them in order, so each block's history is a sequence: the snapshot
must hold, per block, a value between the last one acknowledged before the
snapshot began and the first one sent after it returned.
"""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path

import pytest

from openevs.agent.mirror.engine import REGION_BYTES
from openevs.agent.nbd.client import NbdClient
from openevs.agent.node import StorageNode
from openevs.agent.snapshot_exports import SnapshotExport

BLOCK = 4096
SIZE = 64 << 20
WRITERS = 8
BLOCKS_PER_WRITER = 32


def block(seq: int) -> bytes:
    return struct.pack("<Q", seq) * (BLOCK // 8)


async def run_case(tmp: Path, seed: int) -> None:
    rng = random.Random(seed)
    node = StorageNode("az1.dc1", tmp / "pool")
    await node.start()
    try:
        await node.create_volume("vol", SIZE)
        await node.grant_export("rw", "vol", False)
        # Blocks spread over many regions, some sharing a region (other writers' blocks).
        offsets = rng.sample(range(0, SIZE // BLOCK), WRITERS * BLOCKS_PER_WRITER)
        owned = [offsets[i::WRITERS] for i in range(WRITERS)]
        acked: dict[int, int] = {}  # block -> last acknowledged seq
        sent_after: dict[int, int] = {}  # block -> first seq sent after the snapshot returned
        acked_at_start: dict[int, int] = {}
        phase = {"snap": "before"}
        stop = asyncio.Event()
        enough_before, enough_after = asyncio.Event(), asyncio.Event()
        seq = iter(range(1, 10**9))

        async def writer(blocks: list[int]) -> None:
            async with await NbdClient.connect("127.0.0.1", node.nbd_port, "rw") as client:
                while not stop.is_set():
                    b = rng.choice(blocks)
                    value = next(seq)
                    if phase["snap"] == "after":
                        sent_after.setdefault(b, value)
                    await client.write(b * BLOCK, block(value))
                    acked[b] = value
                    if len(acked) >= len(offsets) // 2:
                        enough_before.set()
                    if len(sent_after) >= len(offsets) // 4:
                        enough_after.set()

        tasks = [asyncio.create_task(writer(blocks)) for blocks in owned]
        await enough_before.wait()
        acked_at_start.update(acked)
        phase["snap"] = "during"
        await node.snapshots.take("vol", "snap")
        phase["snap"] = "after"
        await enough_after.wait()
        stop.set()
        await asyncio.gather(*tasks)

        chain = node.snapshots.chains["vol"]
        export = SnapshotExport(chain, chain.snaps[0])
        preserved_or_pending = chain.snaps[0].layer.preserved or chain.overlay.pending
        assert preserved_or_pending, "writes after the snapshot preserved no region"
        before_drain = export.pread(0, SIZE)
        await chain.drain()  # pending regions preserved: the snapshot reads the same
        assert export.pread(0, SIZE) == before_drain
        for b in offsets:
            (value,) = struct.unpack_from("<Q", export.pread(b * BLOCK, BLOCK))
            assert export.pread(b * BLOCK, BLOCK) == block(value), f"block {b} is torn"
            assert value >= acked_at_start.get(b, 0), f"block {b}: acknowledged {acked_at_start[b]} lost"
            if b in sent_after:
                assert value < sent_after[b], f"block {b}: holds {value}, sent after the snapshot"
        assert all(r < SIZE // REGION_BYTES for r in chain.snaps[0].layer.preserved)
    finally:
        await node.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_snapshot_under_concurrent_writes_is_crash_consistent(tmp_path: Path, seed: int) -> None:
    asyncio.run(run_case(tmp_path, seed))


async def discard_case(tmp: Path) -> None:
    node = StorageNode("az1.dc1", tmp / "pool")
    await node.start()
    try:
        await node.create_volume("vol", SIZE)
        await node.grant_export("rw", "vol", False)
        async with await NbdClient.connect("127.0.0.1", node.nbd_port, "rw") as client:
            for i in range(0, SIZE, 4 << 20):
                await client.write(i, block(i))
        await node.snapshots.take("vol", "snap")
        assert node.replication.before_discard is not None
        await node.replication.before_discard("vol")  # what a reprotect's punch calls first
        with (tmp / "pool" / "vol.img").open("r+b") as fh:
            fh.truncate(0)
            fh.truncate(SIZE)
        chain = node.snapshots.chains["vol"]
        export = SnapshotExport(chain, chain.snaps[0])
        for i in range(0, SIZE, 4 << 20):
            assert export.pread(i, BLOCK) == block(i)
        assert len(chain.snaps[0].layer.preserved) == SIZE // (4 << 20)  # only regions with data
    finally:
        await node.close()


def test_a_discarded_disk_keeps_its_snapshot(tmp_path: Path) -> None:
    asyncio.run(discard_case(tmp_path))
