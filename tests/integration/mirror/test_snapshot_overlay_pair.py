"""A replicated primary with a snapshot whose overlay holds pending writes: the initial
copy and a resync after the DR agent was down read the primary's live content (the
overlay's pending regions, never drained here), so the DR disk equals production."""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.integration.mirror.support import MiB, PairedAgent, connect, pair

SIZE = 16 * MiB
R = 64 * 1024


async def _write(agent: PairedAgent, writes: list[tuple[int, bytes]]) -> None:
    nbd = await connect(agent, "att-v")
    try:
        for offset, data in writes:
            await nbd.write(offset, data)
    finally:
        await nbd.close()  # no FLUSH: nothing drains the overlay


async def _read(agent: PairedAgent, export: str) -> bytes:
    nbd = await connect(agent, export)
    try:
        return bytes(await nbd.read(0, SIZE))
    finally:
        await nbd.close()


def _writes(seed: int, count: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        length = rng.choice((4096, 6000, R, 3 * R))
        out.append((rng.randrange(0, SIZE - length), rng.randbytes(length)))
    return out


@pytest.fixture
def agents(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("OPENEVS_SNAPSHOT_DRAIN_IDLE_S", "3600")
    monkeypatch.setenv("OPENEVS_SNAPSHOT_DRAIN_EXPIRE_S", "3600")  # the overlay stays full
    root = Path(tempfile.mkdtemp(prefix="oevs-ov-"))
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


def test_the_dr_disk_equals_a_primary_with_pending_regions(agents: tuple[PairedAgent, PairedAgent]) -> None:
    a, b = agents
    a.client.create_volume("v", SIZE)
    b.client.create_volume("v-dr", SIZE)
    a.client.grant_export("att-v", "v", False)
    rng = random.Random(1)
    first = [(i * R, rng.randbytes(R)) for i in range(0, SIZE // R, 2)]  # every other region: holes
    asyncio.run(_write(a, first))
    a.client.create_snapshot("v", "s1")
    at_s1 = asyncio.run(_read(a, "att-v"))
    asyncio.run(_write(a, _writes(2, 60)))  # pending in the primary's overlay
    assert (a.pool / "snapshots" / "v" / "overlay.map").stat().st_size > 0

    pair(a, b, "v", "v-dr")  # the initial copy reads the live disk
    a.wait_status("v", "active", timeout_s=60)
    live = asyncio.run(_read(a, "att-v"))
    assert hashlib.sha256(b.image("v-dr").read_bytes()).digest() == hashlib.sha256(live).digest()

    b.kill()  # writes while the DR agent is down: dirty regions, resynced from the live disk
    asyncio.run(_write(a, _writes(3, 60)))
    b.start()
    a.wait_status("v", "active", timeout_s=60)
    live = asyncio.run(_read(a, "att-v"))
    assert b.image("v-dr").read_bytes() == live

    a.client.grant_snapshot_export("ro-s1", "v", "s1")
    assert asyncio.run(_read(a, "ro-s1")) == at_s1
