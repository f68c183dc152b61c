"""A real `openevs witness` on mutual TLS: agents (for their own AZ only) and the
controller are answered; anyone else is refused before a frame is read, and the
witness's records do not change."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from openevs.security import pki
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles
from openevs.security.tls import client_context
from openevs.witness import protocol as p
from openevs.witness.client import AsyncWitnessClient, WitnessUnreachable, units
from tests.support.waiting import wait_for
from tests.support.witness import WitnessProcess

A, B = "az1.dc1", "az2.dc2"
KEY = "group:g1"


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init_ca(d)
    for identity in (Identity(CertRole.AGENT, A), Identity(CertRole.AGENT, B), Identity(CertRole.WITNESS),
                     Identity(CertRole.API)):  # fmt: skip
        pki.issue(d, identity, ip_addresses=["127.0.0.1"])
    pki.issue(d, Identity(CertRole.CONTROLLER))
    return d


@pytest.fixture
def witness(tmp_path: Path, pki_dir: Path) -> Iterator[WitnessProcess]:
    files, controller = pki.files_for(pki_dir, "witness"), pki.files_for(pki_dir, "controller")
    w = WitnessProcess(tmp_path / "witness", tls=files, probe_tls=controller)
    w.start()
    yield w
    w.stop(signal.SIGKILL)


def holder(witness: WitnessProcess, pki_dir: Path) -> list[tuple[str, int, str]]:
    status = witness.client("controller", pki.files_for(pki_dir, "controller")).status([KEY])
    return [(r.key, r.epoch, r.holder) for r in status.records]


def test_agents_and_the_controller_are_answered(witness: WitnessProcess, pki_dir: Path) -> None:
    [grant] = witness.client(A, pki.files_for(pki_dir, f"agent-{A}")).acquire(units([(KEY, 1)]))
    assert grant.granted and grant.holder == A

    async def async_client() -> list[p.Grant]:
        client = AsyncWitnessClient("127.0.0.1", witness.port, B, tls=pki.files_for(pki_dir, f"agent-{B}"))
        try:
            return await client.acquire(units([(KEY, 2)]))
        finally:
            await client.close()

    [refused] = asyncio.run(async_client())
    assert not refused.granted and refused.refusal == "lease_live"
    assert holder(witness, pki_dir) == [(KEY, 1, A)]


def raw_tls(port: int, ctx: ssl.SSLContext) -> bytes:
    """Connect, send a valid Hello, and return whatever comes back before the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        try:
            with ctx.wrap_socket(plain) as sock:
                sock.sendall(p.Connection(p.Role.CLIENT).send(p.Hello(side=A)))
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data
        except (ssl.SSLError, ConnectionError):
            return b""


def test_everyone_else_is_refused_before_a_frame(
    witness: WitnessProcess, pki_dir: Path, tmp_path: Path
) -> None:
    witness.client(A, pki.files_for(pki_dir, f"agent-{A}")).acquire(units([(KEY, 1)]))
    before = holder(witness, pki_dir)
    # plain TCP and a valid Hello: nothing comes back, not even a Welcome
    with socket.create_connection(("127.0.0.1", witness.port), timeout=5) as sock:
        sock.sendall(p.Connection(p.Role.CLIENT).send(p.Hello(side=B)))
        assert sock.recv(65536) == b""
    # TLS without a certificate
    anonymous = ssl.create_default_context(cafile=pki_dir / "ca.pem")
    anonymous.check_hostname = False
    assert raw_tls(witness.port, anonymous) == b""
    # the right CA, the wrong roles (api and witness certificates cannot even be clients)
    for name in ("api", "witness"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(pki_dir / "ca.pem")
        ctx.load_cert_chain(pki_dir / f"{name}.pem", pki_dir / f"{name}.key")
        assert raw_tls(witness.port, ctx) == b""
    # an agent speaking for the other side
    with pytest.raises((WitnessUnreachable, p.RemoteProtocolError)):
        witness.client(B, pki.files_for(pki_dir, f"agent-{A}")).acquire(units([(KEY, 9)]), force=True)
    # a controller certificate of another CA
    pki.init_ca(tmp_path / "foreign")
    foreign = pki.issue(tmp_path / "foreign", Identity(CertRole.CONTROLLER)).files
    thief = TlsFiles(ca=pki_dir / "ca.pem", cert=foreign.cert, key=foreign.key)
    assert raw_tls(witness.port, client_context(thief, check_hostname=False)) == b""
    with pytest.raises(WitnessUnreachable):
        witness.client(B, thief).acquire(units([(KEY, 9)]), force=True)
    assert holder(witness, pki_dir) == before
    assert witness.proc is not None and witness.proc.poll() is None


def test_an_agent_refuses_a_witness_that_is_not_one(tmp_path: Path, pki_dir: Path) -> None:
    """A server with the api certificate of the deployment is not a witness."""
    w = WitnessProcess(tmp_path / "w", tls=pki.files_for(pki_dir, "api"))
    w.state.mkdir(parents=True)
    w.proc = subprocess.Popen(w.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the impostor", lambda: socket.create_connection(("127.0.0.1", w.port), 1).close() or True)
        with pytest.raises(WitnessUnreachable, match="certificate is required"):
            w.client(A, pki.files_for(pki_dir, f"agent-{A}")).ping()
    finally:
        w.proc.kill()
        w.proc.wait()
