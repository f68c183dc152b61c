"""A replication pair with TLS on the wire, end to end: `openevs serve` whose embedded
agent of the production AZ has a certificate of the deployment PKI (TLS optional on
its loopback NBD port) and a standalone DR agent that requires TLS. The link between
them is mutual TLS; the DR disk's connection info is the TLS form (`nbds://` and the
CA bundle), a client built from it reads the same bytes as production, and a
plaintext client is refused."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openevs.agent.nbd.client import NbdClient
from openevs.agent.nbd.constants import Reply
from openevs.agent.nbd.errors import NbdOptionRefused
from openevs.security import pki, tls
from openevs.security.identity import CertRole, Identity
from tests.e2e.agents import StandaloneAgent
from tests.e2e.conftest import ServeProcess, Session
from tests.e2e.test_replication import connection_data
from tests.support.api import make_disk, wait_json

pytestmark = pytest.mark.e2e

MIB = 1 << 20
PROD_AZ, DR_AZ = "az1.dc1", "az3.dc3"


@pytest.fixture
def tls_stack(tmp_path: Path) -> Iterator[tuple[ServeProcess, Path, Session]]:
    pki_dir = tmp_path / "serve" / "data" / "pki"
    pki.init_ca(pki_dir)
    for az in (PROD_AZ, DR_AZ):
        pki.issue(pki_dir, Identity(CertRole.AGENT, az), ip_addresses=["127.0.0.1"])
    pki.issue(pki_dir, Identity(CertRole.CONTROLLER))  # serve finds it in <data_dir>/pki
    controller = pki.files_for(pki_dir, "controller")
    agent = StandaloneAgent(tmp_path, DR_AZ, ("--pki", str(pki_dir), "--nbd-tls", "required"), controller)
    serve = ServeProcess(tmp_path / "serve", extra_env={"OPENEVS_AGENT_URLS": f"{DR_AZ}={agent.url}"})
    assert serve.data_dir / "pki" == pki_dir
    try:
        agent.start()
        serve.start()
        yield serve, pki_dir, serve.login()
    finally:
        serve.close()
        agent.stop()


async def _open(data: dict[str, Any], ca_file: Path | None) -> NbdClient:
    ctx = tls.public_client_context(ca_file) if ca_file is not None else None
    return await NbdClient.connect(data["host"], data["port"], data["export_name"], tls=ctx)


async def _write(data: dict[str, Any]) -> None:
    async with await _open(data, None) as client:
        for seed in range(24):
            block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
            await client.write(seed * 5 * MIB, block)
        await client.flush()


async def _digest(data: dict[str, Any], ca_file: Path | None) -> str:
    h = hashlib.sha256()
    async with await _open(data, ca_file) as client:
        for off in range(0, 1 << 30, 8 * MIB):
            h.update(await client.read(off, 8 * MIB))
    return h.hexdigest()


def test_pair_over_tls_end_to_end(tls_stack: tuple[ServeProcess, Path, Session], tmp_path: Path) -> None:
    _serve, pki_dir, session = tls_stack
    prod, dr = make_disk(session, PROD_AZ), make_disk(session, DR_AZ)
    prod_data = connection_data(session, prod, PROD_AZ)
    assert prod_data["uri"].startswith("nbd://") and prod_data.get("tls_available") is True
    asyncio.run(_write(prod_data))

    r = session.post(
        "/v2/{p}/os-vendor-replications",
        {"replication": {"name": "tls", "volume_ids": [prod, dr], "priority_station": PROD_AZ,
                         "replication_model": "hypermetro"}},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    pair_path = f"/v2/{{p}}/os-vendor-replications/{r.json()['replication']['id']}"
    wait_json(session, pair_path, "replication", lambda p: p["replication_status"] == "active", timeout_s=90)

    dr_data = connection_data(session, dr, DR_AZ)
    assert dr_data["tls"] is True
    assert dr_data["uri"] == f"nbds://{dr_data['host']}:{dr_data['port']}/{dr_data['export_name']}"
    assert dr_data["ca_certificate"] == (pki_dir / "ca.pem").read_text()
    ca_file = tmp_path / "ca-cert.pem"  # what a user stores from the connection info
    ca_file.write_text(dr_data["ca_certificate"])
    assert asyncio.run(_digest(dr_data, ca_file)) == asyncio.run(_digest(prod_data, None))

    async def plaintext() -> None:
        with pytest.raises(NbdOptionRefused) as refused:
            await _open(dr_data, None)
        assert refused.value.reply == Reply.ERR_TLS_REQD

    asyncio.run(plaintext())
