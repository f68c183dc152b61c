"""The deployment's certificates on real loopback connections: an asyncio server that
authorizes by role the way the agent and the witness will, and GnuTLS peers (nbdkit,
nbdinfo, qemu-img) that must accept the same P-256 files for NBD over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from openevs.security import PeerRejected, pki, tls
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles
from tests.conftest import free_port
from tests.e2e.conftest import wait_for

LOOPBACK = "127.0.0.1"
AZ1, AZ2 = "az1.dc1", "az2.dc2"


def _issue(pki_dir: Path, identity: Identity) -> TlsFiles:
    return pki.issue(pki_dir, identity, ip_addresses=[LOOPBACK]).files


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "pki")
    for identity in (
        Identity(CertRole.AGENT, AZ1),
        Identity(CertRole.AGENT, AZ2),
        Identity(CertRole.CONTROLLER),
    ):
        _issue(tmp_path / "pki", identity)
    return tmp_path / "pki"


@pytest.fixture
def foreign_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "foreign")
    _issue(tmp_path / "foreign", Identity(CertRole.CONTROLLER))
    _issue(tmp_path / "foreign", Identity(CertRole.AGENT, AZ2))
    return tmp_path / "foreign"


async def _control_server(files: TlsFiles) -> tuple[asyncio.Server, int, list[str]]:
    """Answers `hello <identity>` to a controller and closes on anyone else, logging why."""
    refused: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            identity = tls.require_peer(writer.get_extra_info("ssl_object"), CertRole.CONTROLLER)
            writer.write(f"hello {identity}\n".encode())
            await writer.drain()
        except PeerRejected as exc:
            refused.append(exc.message)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    server = await asyncio.start_server(serve, LOOPBACK, 0, ssl=tls.server_context(files))
    return server, server.sockets[0].getsockname()[1], refused


async def _greeting(port: int, ctx: ssl.SSLContext) -> bytes:
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ctx, server_hostname=LOOPBACK)
    except (ssl.SSLError, OSError):
        return b""
    try:
        return await reader.readline()
    except (ssl.SSLError, OSError):
        return b""  # TLS 1.3: a refused client certificate shows on the first read
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def test_an_asyncio_server_lets_in_the_controller_only(pki_dir: Path, foreign_dir: Path) -> None:
    async def scenario() -> None:
        server, port, refused = await _control_server(pki.files_for(pki_dir, "agent-az1.dc1"))
        try:
            controller = tls.client_context(pki.files_for(pki_dir, "controller"))
            assert await _greeting(port, controller) == b"hello controller\n"
            other_agent = tls.client_context(pki.files_for(pki_dir, "agent-az2.dc2"))
            assert await _greeting(port, other_agent) == b""
            assert refused == ["a controller certificate is required here; the peer presented agent:az2.dc2"]
            impostor = tls.client_context(
                TlsFiles(pki_dir / "ca.pem", foreign_dir / "controller.pem", foreign_dir / "controller.key")
            )
            assert await _greeting(port, impostor) == b""
            assert await _greeting(port, tls.public_client_context(pki_dir / "ca.pem")) == b""
            assert len(refused) == 1  # the last two never got past the handshake
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


# -- GnuTLS peers ----------------------------------------------------------------


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package {package})")
    return path


def _gnutls_dir(target: Path, files: TlsFiles | None, endpoint: str, ca: Path) -> Path:
    """The directory layout GnuTLS tools want: ca-cert.pem, <endpoint>-cert.pem, <endpoint>-key.pem."""
    target.mkdir()
    (target / "ca-cert.pem").symlink_to(ca)
    if files is not None:
        (target / f"{endpoint}-cert.pem").symlink_to(files.cert)
        (target / f"{endpoint}-key.pem").symlink_to(files.key)
    return target


@pytest.fixture
def nbdkit_server(pki_dir: Path, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """nbdkit memory exports with the AZ1 agent's certificate: one port requires a client
    certificate from the CA (the replication link), the other asks for none (users)."""
    nbdkit = _need("nbdkit", "nbdkit")
    server_dir = _gnutls_dir(
        tmp_path / "srv", pki.files_for(pki_dir, "agent-az1.dc1"), "server", pki_dir / "ca.pem"
    )
    ports, procs = (free_port(), free_port()), []
    for port, verify in zip(ports, (True, False), strict=True):
        args = [
            nbdkit,
            "-f",
            "-p",
            str(port),
            "-i",
            LOOPBACK,
            "--tls=require",
            f"--tls-certificates={server_dir}",
        ]
        procs.append(subprocess.Popen([*args, *(["--tls-verify-peer"] if verify else []), "memory", "1M"]))
    try:
        for port in ports:
            wait_for(f"nbdkit on {port}", lambda p=port: _listening(p), timeout_s=20)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


def _nbdinfo(port: int, client_dir: Path) -> subprocess.CompletedProcess[str]:
    uri = f"nbds://{LOOPBACK}:{port}/?tls-certificates={client_dir}"
    return subprocess.run(
        [_need("nbdinfo", "libnbd-bin"), "--size", uri], capture_output=True, text=True, timeout=60
    )


@pytest.mark.interop
def test_gnutls_peers_accept_our_certificates(
    nbdkit_server: tuple[int, int], pki_dir: Path, foreign_dir: Path, tmp_path: Path
) -> None:
    mutual, public = nbdkit_server
    ca = pki_dir / "ca.pem"
    agent2 = _gnutls_dir(tmp_path / "agent2", pki.files_for(pki_dir, "agent-az2.dc2"), "client", ca)
    done = _nbdinfo(mutual, agent2)
    assert done.returncode == 0 and done.stdout.strip() == str(1 << 20), done.stderr
    impostor = _gnutls_dir(tmp_path / "impostor", pki.files_for(foreign_dir, "agent-az2.dc2"), "client", ca)
    assert _nbdinfo(mutual, impostor).returncode != 0
    user = _gnutls_dir(tmp_path / "user", None, "client", ca)
    assert _nbdinfo(mutual, user).returncode != 0  # no client certificate, mutual port
    assert _nbdinfo(public, user).returncode == 0  # users verify the server with the CA only
    distrust = _gnutls_dir(tmp_path / "distrust", None, "client", foreign_dir / "ca.pem")
    assert _nbdinfo(public, distrust).returncode != 0

    qemu_img = _need("qemu-img", "qemu-utils")
    for port, creds, ok in ((mutual, agent2, True), (public, user, True), (mutual, user, False)):
        done = subprocess.run(
            [
                qemu_img, "info", "--output=json",
                "--object", f"tls-creds-x509,id=tls0,dir={creds},endpoint=client",
                "--image-opts", f"driver=nbd,host={LOOPBACK},port={port},tls-creds=tls0",
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (done.returncode == 0) == ok, (port, creds, done.stderr)
