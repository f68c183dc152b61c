"""A fully dirty 32 TiB disk (the API's maximum) fits in the agent: memory and bitmap file.

Two real agent processes pair two sparse 32 TiB disks; the primary is told
that the whole disk differs through the control API's `add_dirty` (the path
a reprotect takes after a failover of an unsynced pair). The primary
agent's resident memory must grow by less than 64 MiB, its bitmap file must
hold at most 64 MiB, every bit must survive a restart, and the sync must
start walking the set without materializing it. ext4 holds no file over
16 TiB, so the pools are on tmpfs (/dev/shm), which sparse files cost nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openevs.agent.mirror.engine import MAX_CHUNK_REGIONS, REGION_BYTES
from openevs.agent.mirror.sync import PIPELINE
from openevs.contract import ReplicationRequest
from openevs.domain.replication import Role
from tests.integration.mirror.support import PairedAgent
from tests.support.waiting import wait_for

TiB = 1 << 40
MiB = 1 << 20
SIZE = 32 * TiB
SHM = Path("/dev/shm")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _sparse_32_tib_possible() -> bool:
    if not SHM.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=SHM) as fh:
            fh.truncate(SIZE)
    except OSError:
        return False
    return True


@pytest.fixture
def big_agents() -> Iterator[tuple[PairedAgent, PairedAgent]]:
    if not _sparse_32_tib_possible():
        pytest.skip("no filesystem here holds a 32 TiB sparse file (/dev/shm)")
    root = Path(tempfile.mkdtemp(prefix="oevs-d-", dir=SHM))
    a, b = PairedAgent(root / "a", "az1.dc1"), PairedAgent(root / "b", "az2.dc2")
    a.start()
    b.start()
    yield a, b
    for agent in (a, b):
        agent.kill()
        agent.client.close()
        if agent.log.exists():
            print(f"--- {agent.az} log ---\n{agent.log.read_text()[-20000:]}")
    shutil.rmtree(root, ignore_errors=True)


def _primary(b: PairedAgent, *, mirroring: bool, epoch: int = 1, rate: int = 0) -> ReplicationRequest:
    return ReplicationRequest(
        role=Role.PRIMARY, epoch=epoch, pair_id="p-big", peer=b.peer("link-big"),
        mirroring=mirroring, resync_rate_bytes_per_s=rate,
    )  # fmt: skip


def test_a_fully_dirty_32_tib_disk_costs_under_64_mib(
    big_agents: tuple[PairedAgent, PairedAgent],
) -> None:
    a, b = big_agents
    a.client.create_volume("big", SIZE)
    b.client.create_volume("big-dr", SIZE)
    b.client.set_replication(
        "big-dr",
        ReplicationRequest(role=Role.SECONDARY, epoch=1, pair_id="p-big", link_export="link-big"),
    )
    a.client.set_replication("big", _primary(b, mirroring=False))
    assert a.proc is not None
    before = rss_bytes(a.proc.pid)

    state = a.client.set_replication("big", _primary(b, mirroring=False).replace(add_dirty=[(0, SIZE)]))
    grown = rss_bytes(a.proc.pid) - before
    bitmap = a.pool / "big.bitmap"
    on_disk = os.stat(bitmap)
    print(f"\n32 TiB all dirty: agent RSS +{grown / MiB:.1f} MiB, bitmap file "
          f"{on_disk.st_size / MiB:.1f} MiB ({on_disk.st_blocks * 512 / MiB:.1f} MiB allocated)")  # fmt: skip
    assert state.dirty_bytes == SIZE and state.replication_status == "inactive"
    assert grown < 64 * MiB
    assert on_disk.st_size <= 64 * MiB and on_disk.st_blocks * 512 <= 64 * MiB
    ranges = a.client.get_replication_dirty("big").ranges
    assert [tuple(r) for r in ranges] == [(0, SIZE)]

    # What is dirty on disk is never lost: a restarted agent loads every bit.
    a.kill()
    a.start()
    assert a.proc is not None
    state = a.state("big")
    assert state.dirty_bytes == SIZE
    loaded = rss_bytes(a.proc.pid)
    print(f"restarted agent with the 32 TiB bitmap loaded: RSS {loaded / MiB:.1f} MiB"
          f" (first agent before marking: {before / MiB:.1f} MiB)")  # fmt: skip
    assert loaded - before < 64 * MiB

    # The sync walks the set in disk order (rate-limited here: a few chunks).
    a.client.set_replication("big", _primary(b, mirroring=True, rate=8 * MiB))
    copying = wait_for("resync started", lambda: a.state("big").resynced_bytes_total > 0 or None, 30)
    assert copying
    state = a.state("big")
    assert state.resynced_bytes_total > 0 and state.dirty_bytes <= SIZE - state.resynced_bytes_total
    assert state.sync is not None and state.sync.total_bytes == SIZE  # progress counts the whole disk
    # The sync's own working memory is its reusable chunk buffers, at most one per request
    # in flight; the dirty set it walks adds nothing.
    syncing = rss_bytes(a.proc.pid) - loaded
    print(f"syncing: RSS +{syncing / MiB:.1f} MiB")
    assert syncing < 64 * MiB + PIPELINE * MAX_CHUNK_REGIONS * REGION_BYTES
    a.client.set_replication("big", _primary(b, mirroring=False))
