"""A 1 TiB sparse disk costs the agent no more memory than a 1 GiB one: created,
exported, mapped over NBD (block status of the whole disk), read and written."""

from __future__ import annotations

import asyncio
from pathlib import Path

from openevs.agent.nbd.client import NbdClient
from tests.integration.agent.support import AgentProcess

GIB, TIB, MIB = 1 << 30, 1 << 40, 1 << 20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def exercise(port: int, name: str, size: int) -> None:
    client = await NbdClient.connect("127.0.0.1", port, name)
    try:
        assert client.size_bytes == size
        offset = 0
        while offset < size:  # map the whole disk, as nbdcopy and nbdinfo --map do
            extents = await client.block_status(offset, min(size - offset, 1 << 31))
            offset += sum(length for length, _ in extents)
        for off in (0, size // 2, size - MIB):
            await client.write(off, b"\x5a" * MIB)
            assert await client.read(off, MIB) == b"\x5a" * MIB
        await client.flush()
    finally:
        await client.close()


def test_one_tib_costs_what_one_gib_costs(agent: AgentProcess) -> None:
    assert agent.proc is not None
    port = agent.client.health().nbd_port
    costs = {}
    for vid, size in (("small", GIB), ("big", TIB)):
        agent.client.create_volume(vid, size)
        agent.client.grant_export(f"x-{vid}", vid, False)
        before = rss_kib(agent.proc.pid)
        asyncio.run(exercise(port, f"x-{vid}", size))
        costs[vid] = rss_kib(agent.proc.pid) - before
    print(f"\nagent RSS growth: 1 GiB disk {costs['small']} KiB, 1 TiB disk {costs['big']} KiB")
    assert costs["big"] <= max(costs["small"], 0) + 8 * 1024
