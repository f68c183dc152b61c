"""Replication pairs end to end: the real `openevs serve`, a standalone agent for
the DR AZ (so the link can really be cut), and NBD clients on both sides.

Checks the acceptance of the pair issue: bytes written before and after
pairing are on the DR disk once active; the DR disk refuses writes; a cut
link keeps production writing, turns the pair inactive with fault_level
"5", and after the link returns only about the dirty bytes are resynced.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openevs.agent.client import HttpAgentClient
from openevs.agent.nbd.client import NbdClient
from openevs.agent.nbd.errors import NbdError
from openevs.agent.supervisor import control_socket_path
from tests.e2e.agents import StandaloneAgent
from tests.e2e.conftest import ServeProcess, Session
from tests.support.api import make_disk, wait_json
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

MIB = 1 << 20
PROD_AZ, DR_AZ = "az1.dc1", "az3.dc3"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ServeProcess, StandaloneAgent, Session]]:
    agent = StandaloneAgent(tmp_path, DR_AZ)
    serve = ServeProcess(tmp_path / "serve", extra_env={"OPENEVS_AGENT_URLS": f"{DR_AZ}={agent.url}"})
    try:  # every process is stopped even when the set-up itself fails
        agent.start()
        serve.start()
        yield serve, agent, serve.login()
    finally:
        serve.close()
        agent.stop()


def connection_data(session: Session, volume_id: str, az: str) -> dict[str, Any]:
    """Attach the disk to a (stopped) server of its AZ and get the NBD grant's data."""
    r = session.post(
        "/v2.1/{p}/servers", {"server": {"name": f"host-{volume_id[:8]}", "availability_zone": az}}
    )
    sid = r.json()["server"]["id"]
    assert session.post(f"/v2.1/{{p}}/servers/{sid}/action", {"os-stop": None}).status_code == 202
    r = session.post(
        f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments", {"volumeAttachment": {"volumeId": volume_id}}
    )
    assert r.status_code == 200, r.text
    r = session.post(
        f"/v2/{{p}}/volumes/{volume_id}/action",
        {"os-initialize_connection": {"connector": {"server_id": sid}}},
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["connection_info"]["data"]
    return data


def nbd_address(session: Session, volume_id: str, az: str) -> tuple[str, int, str, bool]:
    data = connection_data(session, volume_id, az)
    return data["host"], data["port"], data["export_name"], data["read_only"]


def block(seed: int, size: int = MIB) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


async def write_blocks(addr: tuple[str, int, str, bool], seeds: range, stride: int = 3 * MIB) -> None:
    client = await NbdClient.connect(addr[0], addr[1], addr[2])
    try:
        for seed in seeds:
            await client.write((seed * stride) % ((1 << 30) - 4 * MIB), block(seed))
        await client.flush()
    finally:
        await client.close()


async def digest(addr: tuple[str, int, str, bool], size: int = 1 << 30) -> str:
    client = await NbdClient.connect(addr[0], addr[1], addr[2])
    h = hashlib.sha256()
    try:
        for off in range(0, size, 8 * MIB):
            h.update(await client.read(off, 8 * MIB))
    finally:
        await client.close()
    return h.hexdigest()


def test_pair_copies_real_bytes_and_survives_a_link_cut(
    stack: tuple[ServeProcess, StandaloneAgent, Session],
) -> None:
    serve, agent, session = stack
    prod, dr = make_disk(session, PROD_AZ), make_disk(session, DR_AZ)
    prod_addr = nbd_address(session, prod, PROD_AZ)
    asyncio.run(write_blocks(prod_addr, range(0, 40)))  # before pairing

    r = session.post(
        "/v2/{p}/os-vendor-replications",
        {
            "replication": {
                "name": "e2e",
                "volume_ids": [prod, dr],
                "priority_station": PROD_AZ,
                "replication_model": "hypermetro",
            }
        },
    )
    assert r.status_code == 202, r.text
    pair_path = f"/v2/{{p}}/os-vendor-replications/{r.json()['replication']['id']}"
    pair = wait_json(
        session,
        pair_path,
        "replication",
        lambda p: p["status"] == "available" and p["replication_status"] == "active",
    )
    assert pair["progress"] == "100" and pair["fault_level"] == "0"

    asyncio.run(write_blocks(prod_addr, range(40, 60)))  # after pairing, while active
    dr_addr = nbd_address(session, dr, DR_AZ)
    assert dr_addr[3] is True, "the DR disk must be exported read-only"
    assert asyncio.run(digest(dr_addr)) == asyncio.run(digest(prod_addr))

    async def write_to_dr() -> None:
        client = await NbdClient.connect(dr_addr[0], dr_addr[1], dr_addr[2])
        try:
            await client.write(0, b"x" * 4096)
        finally:
            await client.close()

    with pytest.raises(NbdError) as refused:
        asyncio.run(write_to_dr())
    assert refused.value.errno == errno.EPERM

    # Cut the link: the DR agent dies. Production keeps writing.
    agent.kill()
    outage_seeds = range(100, 132)
    asyncio.run(write_blocks(prod_addr, outage_seeds, stride=5 * MIB))
    written_during_outage = len(outage_seeds) * MIB
    wait_for("the DR AZ to show unavailable", lambda: session.azs()[DR_AZ] is False, 30)
    pair = wait_json(
        session,
        pair_path,
        "replication",
        lambda p: p["replication_status"] == "inactive" and p["fault_level"] == "5",
    )

    prod_agent = HttpAgentClient(PROD_AZ, f"unix:{control_socket_path(serve.data_dir / 'agents', PROD_AZ)}")
    before = prod_agent.get_replication(prod)
    assert before.dirty_bytes >= written_during_outage
    agent.start()  # the link returns: only dirty regions are copied
    wait_for("the DR AZ to show available again", lambda: session.azs()[DR_AZ] is True, 30)
    pair = wait_json(
        session,
        pair_path,
        "replication",
        lambda p: p["replication_status"] == "active" and p["fault_level"] == "0",
        timeout_s=90,
    )
    after = prod_agent.get_replication(prod)
    resynced = after.resynced_bytes_total - before.resynced_bytes_total
    print(f"\nwritten during outage: {written_during_outage} bytes; resynced: {resynced} bytes")
    assert written_during_outage <= resynced <= written_during_outage * 1.25 + 4 * MIB
    assert asyncio.run(digest(dr_addr)) == asyncio.run(digest(prod_addr))

    # Deleting the pair leaves two ordinary writable disks.
    assert session.delete(pair_path).status_code == 202
    wait_for("the pair to be deleted", lambda: session.get(pair_path).status_code == 404, 60)
    asyncio.run(write_to_dr())  # no longer refused (a new connection sees a writable export)
    prod_agent.close()
    os.sync()
