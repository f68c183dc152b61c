"""The snapshot overlay on a real agent process: a SIGKILL loses no acknowledged write.

Writes after a snapshot are acknowledged from the overlay; the agent is
killed before any drain (the drain delayed for the test), restarted, and
the disk reads every acknowledged byte while the snapshot still reads
what it held; a flush then drains it into the disk file.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path

import pytest

from openevs.agent.nbd.client import NbdClient
from tests.integration.agent.support import AgentProcess
from tests.integration.agent.test_snapshots import SIZE, image, read_export, run, sha, uri

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not shutil.which("nbdcopy"), reason="needs nbdcopy"),
]

R = 64 * 1024


async def write_unflushed(port: int, export: str, writes: list[tuple[int, bytes]]) -> None:
    client = await NbdClient.connect("127.0.0.1", port, export)
    try:
        for offset, data in writes:
            await client.write(offset, data)
    finally:
        await client.close()  # no FLUSH: the writes are acknowledged, not durable


def test_a_sigkill_with_pending_writes_loses_none(
    short_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENEVS_SNAPSHOT_DRAIN_IDLE_S", "3600")
    monkeypatch.setenv("OPENEVS_SNAPSHOT_DRAIN_EXPIRE_S", "3600")  # nothing drains by itself
    agent = AgentProcess(short_dir)
    try:
        agent.start()
        client = agent.client
        client.create_volume("vol-a", SIZE)
        client.grant_export("rw-a", "vol-a", False)
        a = image(tmp_path / "a.raw", 1)
        run("nbdcopy", str(a), uri(agent, "rw-a"))
        client.create_snapshot("vol-a", "s1")
        rng = random.Random(7)
        live = bytearray(a.read_bytes())
        writes = [(0, rng.randbytes(R)), (3 * R + 4096, rng.randbytes(8192))]
        writes.append((7 * R - 100, rng.randbytes(3 * R)))
        writes += [(rng.randrange(0, SIZE - 4096) // 512 * 512, rng.randbytes(4096)) for _ in range(40)]
        for offset, data in writes:
            live[offset : offset + len(data)] = data
        port = client.health().nbd_port
        asyncio.run(write_unflushed(port, "rw-a", writes))
        overlay_map = agent.pool / "snapshots" / "vol-a" / "overlay.map"
        assert overlay_map.stat().st_size > 0  # pending, undrained

        agent.kill()
        agent.start()
        expected = tmp_path / "expected.raw"
        expected.write_bytes(bytes(live))
        assert read_export(agent, "rw-a", tmp_path / "after.raw") == sha(expected)
        agent.client.grant_snapshot_export("ro-s1", "vol-a", "s1")
        assert read_export(agent, "ro-s1", tmp_path / "s1.raw") == sha(a)

        agent.client.get_snapshot("vol-a", "s1")  # drains (preserved_bytes counts the pending)
        volume = agent.pool / "vol-a.img"
        assert volume.read_bytes() == bytes(live)
        assert read_export(agent, "ro-s1", tmp_path / "s1b.raw") == sha(a)
    finally:
        agent.kill()
