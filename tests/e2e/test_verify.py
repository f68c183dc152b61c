"""Online verify end to end: the real serve, a standalone DR agent, bytes changed
behind the DR agent's back.

Verify finds exactly the changed regions (and marks them dirty), the sync
repairs them, a second verify is clean; and a verify while a workload keeps
writing reports no mismatch on a healthy pair (regions written meanwhile are
skipped and counted, never reported as different).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openevs.agent.nbd.client import NbdClient
from tests.e2e.agents import StandaloneAgent, serve_with_standalone_agent
from tests.e2e.conftest import ServeProcess, Session
from tests.e2e.test_cli import ok
from tests.e2e.test_metrics import create_pair
from tests.e2e.test_replication import MIB, digest, nbd_address, write_blocks
from tests.support.api import make_disk, wait_json

pytestmark = pytest.mark.e2e

PROD_AZ, DR_AZ = "az1.dc1", "az3.dc3"
REGION = 64 * 1024
GIB = 1 << 30


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ServeProcess, StandaloneAgent, Session]]:
    with serve_with_standalone_agent(tmp_path, DR_AZ) as (serve, agent):
        yield serve, agent, serve.login()


def run_verify(session: Session, pair_id: str) -> dict[str, Any]:
    path = f"/v2/{{p}}/os-vendor-replications/{pair_id}"
    r = session.post(path + "/verify")
    assert r.status_code == 202, r.text
    assert r.json()["replication"]["verify"]["status"] == "running"
    pair = wait_json(session, path, "replication", lambda p: p["verify"]["status"] != "running", 120)
    verify: dict[str, Any] = pair["verify"]
    assert verify["status"] == "finished", verify
    assert verify["total_bytes"] == GIB and verify["progress"] == "100"
    return verify


def paired(session: Session) -> tuple[str, str, str, tuple[str, int, str, bool]]:
    prod, dr = make_disk(session, PROD_AZ), make_disk(session, DR_AZ)
    prod_addr = nbd_address(session, prod, PROD_AZ)
    asyncio.run(write_blocks(prod_addr, range(0, 40)))
    pair_id = create_pair(session, prod, dr)
    wait_json(session, f"/v2/{{p}}/os-vendor-replications/{pair_id}", "replication",
              lambda p: p["replication_status"] == "active")  # fmt: skip
    return prod, dr, pair_id, prod_addr


def test_verify_finds_exactly_the_changed_regions_and_the_sync_repairs_them(
    stack: tuple[ServeProcess, StandaloneAgent, Session],
) -> None:
    serve, agent, session = stack
    prod, dr, pair_id, prod_addr = paired(session)
    first = run_verify(session, pair_id)
    assert first["mismatched_bytes"] == 0 and first["mismatched_ranges"] == []
    assert first["checked_bytes"] + first["skipped_bytes"] == GIB

    # Change bytes of the DR disk's pool file behind its agent's back: one byte in
    # region 3, and 100 bytes across the boundary of regions 700 and 701.
    image = agent.pool / f"{dr}.img"
    fd = os.open(image, os.O_RDWR)
    try:
        os.pwrite(fd, b"\xff", 3 * REGION + 17)
        os.pwrite(fd, b"\x01" * 100, 701 * REGION - 50)
    finally:
        os.close(fd)
    found = run_verify(session, pair_id)
    assert found["mismatched_ranges"] == [[3 * REGION, REGION], [700 * REGION, 2 * REGION]]
    assert found["mismatched_bytes"] == 3 * REGION

    # They were marked dirty: the sync copies them back, the pair is active again.
    path = f"/v2/{{p}}/os-vendor-replications/{pair_id}"
    wait_json(session, path, "replication", lambda p: p["replication_status"] == "active")
    # The second one through the CLI, as an operator runs it.
    done = ok(serve.client_env(), "replication", "verify", pair_id, "--wait", "-f", "json")
    again = json.loads(done.stdout)["verify"]
    assert again["status"] == "finished" and again["checked_bytes"] + again["skipped_bytes"] == GIB
    assert again["mismatched_bytes"] == 0 and again["mismatched_ranges"] == []
    assert "0 mismatched" in done.stderr, done.stderr
    dr_addr = nbd_address(session, dr, DR_AZ)
    assert asyncio.run(digest(dr_addr)) == asyncio.run(digest(prod_addr))


def test_verify_under_a_running_workload_reports_no_mismatch(
    stack: tuple[ServeProcess, StandaloneAgent, Session],
) -> None:
    serve, agent, session = stack
    prod, dr, pair_id, prod_addr = paired(session)
    stop = threading.Event()
    written = [0]

    async def workload() -> None:
        client = await NbdClient.connect(prod_addr[0], prod_addr[1], prod_addr[2])
        try:
            n = 0
            while not stop.is_set() and n < 20000:  # bounded, and stopped by the test
                offset = (n * 7 * MIB + (n % 13) * REGION) % (GIB - MIB)
                await client.write(offset, hashlib.sha256(str(n).encode()).digest() * 2048)
                n += 1
                written[0] = n
        finally:
            await client.close()

    thread = threading.Thread(target=lambda: asyncio.run(workload()))
    thread.start()
    try:
        result = run_verify(session, pair_id)
    finally:
        stop.set()
        thread.join(60)
    assert written[0] > 0
    assert result["mismatched_bytes"] == 0, result
    assert result["checked_bytes"] + result["skipped_bytes"] == GIB
