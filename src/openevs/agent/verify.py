"""Operator extensions on the agent: online verify, and a pair's resync rate.

DRBD's verify-alg: the controller asks both agents of a pair to hash the
same range (keyed BLAKE2b, 16 bytes per 64 KiB region, a new key for every
verify; the data never leaves its disk) and compares. Writes go on
meanwhile, so the primary also reports which regions its hashes prove
nothing about: those being written, dirty or copied when it hashed
(`busy`), and, asked again after the peer hashed (`/changes`), those written
since. The controller skips (and counts) those; a region that differs
otherwise is marked dirty through `/dirty`, so the sync repairs it.

Rules: hashing reads the volume file in a thread (never on the event loop);
the counters are read on the loop, before and after.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from fastapi import APIRouter

from openevs.agent.mirror.engine import REGION_BYTES, MirrorState
from openevs.agent.mirror.regions import span
from openevs.agent.mirror.replica import Replica
from openevs.agent.node import StorageNode
from openevs.agent.pool import data_extents
from openevs.contract import DirtyRanges, ReplicationState
from openevs.contract_ops import ChangesRequest, HashRequest, RegionChanges, RegionHashes, ResyncRate
from openevs.domain.replication import Role

DIGEST_BYTES = 16


READ_BYTES = 4 << 20


def hash_regions(path: str, offset: int, length: int, key: bytes) -> list[str]:
    """Blocking: the keyed digest of every region of [offset, offset+length) (zeros past
    the end). Holes are not read: a region with no data has the digest of zeros."""

    def digest(data: bytes | memoryview) -> str:
        return hashlib.blake2b(data, digest_size=DIGEST_BYTES, key=key).hexdigest()

    zero = digest(bytes(REGION_BYTES))
    digests: list[str] = []
    buffer = bytearray(READ_BYTES)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = data_extents(fd, offset, length)
        end = offset + length
        for start in range(offset, end, READ_BYTES):
            size = min(READ_BYTES, end - start)
            sizes = [min(REGION_BYTES, size - i) for i in range(0, size, REGION_BYTES)]
            if not any(o < start + size and start < o + n for o, n in extents):
                digests.extend(zero if n == REGION_BYTES else digest(bytes(n)) for n in sizes)
                continue
            view = memoryview(buffer)[:size]
            got = os.preadv(fd, [view], start)
            view[got:] = bytes(size - got)  # past the end of the file: zeros
            digests.extend(digest(view[i * REGION_BYTES : i * REGION_BYTES + n]) for i, n in enumerate(sizes))
    finally:
        os.close(fd)
    return digests


def _regions(offset: int, length: int) -> range:
    return range(offset // REGION_BYTES, (offset + length - 1) // REGION_BYTES + 1)


def busy_regions(state: MirrorState, regions: range) -> list[int]:
    """Regions whose bytes may differ from the peer right now, for a known reason."""
    window = span(regions.start, regions.stop)
    busy = (state.dirty & window) | (state.copying & window)
    busy.update(r for r in state.writing if r in regions)
    return list(busy)


def verify_router(node: StorageNode) -> APIRouter:
    router = APIRouter()
    repl = node.replication

    def replica(volume_id: str) -> Replica:
        repl.dirty_ranges(volume_id)  # NotFound when absent or not replicated
        return repl.replicas[volume_id]

    @router.post("/volumes/{volume_id}/replication/hash")
    async def hash_volume(volume_id: str, body: HashRequest) -> RegionHashes:
        r = replica(volume_id)
        await node.snapshots.drain(volume_id)  # the file holds what the overlay has pending
        regions = _regions(body.offset, body.length)
        primary = r.state.role is Role.PRIMARY
        seq = r.activity.write_seq if primary else 0
        busy = busy_regions(r.state, regions) if primary else []
        digests = await asyncio.to_thread(
            hash_regions, r.image_path, body.offset, body.length, bytes.fromhex(body.key)
        )
        return RegionHashes(first_region=regions.start, digests=digests, write_seq=seq, busy=busy)

    @router.post("/volumes/{volume_id}/replication/changes")
    async def changes(volume_id: str, body: ChangesRequest) -> RegionChanges:
        r = replica(volume_id)
        regions = _regions(body.offset, body.length)
        changed = set(r.activity.written_since(body.since_seq, regions)) | set(busy_regions(r.state, regions))
        return RegionChanges(regions=sorted(changed))

    @router.put("/volumes/{volume_id}/replication/resync-rate")
    async def set_resync_rate(volume_id: str, body: ResyncRate) -> ReplicationState:
        return await repl.set_resync_rate(volume_id, body.resync_rate_bytes_per_s)

    @router.post("/volumes/{volume_id}/replication/dirty")
    async def mark_dirty(volume_id: str, body: DirtyRanges) -> ReplicationState:
        """Mark ranges dirty (a verify found them different): the sync copies them."""
        r = replica(volume_id)
        await r.mark_ranges(body.ranges)
        return r.describe()

    return router
