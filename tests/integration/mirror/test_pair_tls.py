"""A replication pair whose agents require TLS: users' NBD and the link are encrypted,
the link is mutual TLS with agent certificates, and the DR bytes equal the production
bytes. Plaintext clients, certificate-less link clients and a primary that expects
another AZ's agent are all turned away."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openevs.agent.mirror import wire
from openevs.agent.mirror.link_pool import LinkConnection, open_link_connection
from openevs.agent.nbd.client import NbdClient
from openevs.agent.nbd.constants import Reply
from openevs.agent.nbd.errors import NbdOptionRefused
from openevs.contract import Peer, ReplicationRequest
from openevs.domain.replication import Role
from openevs.security import pki, tls
from openevs.security.identity import CertRole, Identity
from tests.integration.mirror.support import MiB, PairedAgent, write_blocks
from tests.support.waiting import wait_for

LINK = "link-secret-tls"


class TlsAgent(PairedAgent):
    def __init__(self, root: Path, az: str, pki_dir: Path) -> None:
        super().__init__(root, az)
        self.pki_dir = pki_dir

    def command(self) -> list[str]:
        return [*super().command(), "--pki", str(self.pki_dir), "--nbd-tls", "required"]

    def peer(self, export: str) -> Peer:
        return Peer(host="127.0.0.1", port=self.nbd_port, export=export, az=self.az)


@pytest.fixture
def tls_agents() -> Iterator[tuple[TlsAgent, TlsAgent]]:
    root = Path(tempfile.mkdtemp(prefix="oevs-t-"))
    pki_dir = root / "pki"
    pki.init_ca(pki_dir)
    for az in ("az1.dc1", "az2.dc2"):
        pki.issue(pki_dir, Identity(CertRole.AGENT, az), ip_addresses=["127.0.0.1"])
    a, b = TlsAgent(root / "a", "az1.dc1", pki_dir), TlsAgent(root / "b", "az2.dc2", pki_dir)
    a.start()
    b.start()
    yield a, b
    for agent in (a, b):
        agent.kill()
        agent.client.close()
        if agent.log.exists():
            print(f"--- {agent.az} log ---\n{agent.log.read_text()[-20000:]}")
    shutil.rmtree(root, ignore_errors=True)


async def _connect(agent: TlsAgent, export: str, *, with_tls: bool = True) -> NbdClient:
    ctx = tls.public_client_context(agent.pki_dir / "ca.pem") if with_tls else None
    return await NbdClient.connect("127.0.0.1", agent.nbd_port, export, tls=ctx)


def _pair(a: TlsAgent, b: TlsAgent, peer: Peer) -> None:
    b.client.set_replication(
        "dr",
        ReplicationRequest(
            role=Role.SECONDARY, epoch=1, pair_id="p-vol", link_export=LINK, initial_sync=True
        ),
    )
    a.client.set_replication(
        "vol",
        ReplicationRequest(
            role=Role.PRIMARY, epoch=1, pair_id="p-vol", peer=peer, mirroring=True, initial_sync=True
        ),
    )


def test_pair_with_the_link_encrypted_keeps_dr_bytes_equal(tls_agents: tuple[TlsAgent, TlsAgent]) -> None:
    a, b = tls_agents
    assert a.client.health().nbd_tls == "required"
    a.client.create_volume("vol", 64 * MiB)
    b.client.create_volume("dr", 64 * MiB)
    a.client.grant_export("att", "vol", False)

    async def before() -> None:
        async with await _connect(a, "att") as nbd:
            await write_blocks(nbd, range(0, 64 * MiB, 7 * MiB), 512 * 1024)

    asyncio.run(before())
    _pair(a, b, b.peer(LINK))
    state = a.wait_status("vol", "active")
    assert state.link_up and state.dirty_bytes == 0

    async def mirrored() -> None:
        async with await _connect(a, "att") as nbd:
            await write_blocks(nbd, range(MiB + 11, 60 * MiB, 3 * MiB), 200_000, seed=1)
            await nbd.write(2 * MiB, os.urandom(4 * MiB))
            await nbd.write_zeroes(40 * MiB, MiB)
            await nbd.flush()

    asyncio.run(mirrored())
    assert a.state("vol").replication_status == "active"
    assert a.checksum("vol") == b.checksum("dr")

    async def refused() -> None:
        with pytest.raises(NbdOptionRefused) as plain:
            await _connect(a, "att", with_tls=False)
        assert plain.value.reply == Reply.ERR_TLS_REQD
        # The link export over TLS but without an agent certificate: unknown, as if absent.
        with pytest.raises(NbdOptionRefused) as user:
            await _connect(b, f"{LINK}~intruder")
        assert user.value.reply == Reply.ERR_UNKNOWN
        # The link protocol itself, upgraded but with no certificate: closed before a frame.
        anonymous = ssl.create_default_context(cafile=str(a.pki_dir / pki.CA_CERT))
        anonymous.check_hostname = False

        def lost(_conn: LinkConnection, _reason: str) -> None:
            pass

        with pytest.raises((ConnectionError, OSError, wire.WireError)):
            conn = await open_link_connection("127.0.0.1", b.nbd_port, "intruder", lost, tls=anonymous)
            reply = await asyncio.wait_for(conn.send(wire.Kind.OPEN, 0, 0, len(LINK), LINK.encode()), 10)
            raise AssertionError(f"an anonymous link client got an answer: {reply}")

    asyncio.run(refused())
    assert a.state("vol").link_up  # the intruders changed nothing
    refusal = "replication link refused"
    wait_for("the refusal in the DR agent's log", lambda: refusal in b.log.read_text() or None)


def test_a_primary_expecting_another_az_never_brings_the_link_up(
    tls_agents: tuple[TlsAgent, TlsAgent],
) -> None:
    a, b = tls_agents
    a.client.create_volume("vol", 16 * MiB)
    b.client.create_volume("dr", 16 * MiB)
    wrong = Peer(host="127.0.0.1", port=b.nbd_port, export=LINK, az="az3.dc3")
    _pair(a, b, wrong)
    state = wait_for("link refused", lambda: (s := a.state("vol")).link_error and s)
    assert not state.link_up
    assert "az3.dc3" in (state.link_error or "")
