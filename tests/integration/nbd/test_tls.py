"""NBD over TLS (NBD_OPT_STARTTLS) on our server: our client, GnuTLS clients (nbdinfo,
nbdcopy, qemu-img), plaintext clients refused with TLS_REQD, and hostile peers
(a handshake left hanging, random bytes, truncated handshakes) that must not
disturb anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client import NbdClient
from openevs.agent.nbd.constants import Option, Reply
from openevs.agent.nbd.errors import NbdOptionRefused
from openevs.agent.nbd.export import FileExport
from openevs.agent.nbd.server import TlsPolicy
from openevs.security import pki, tls
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles
from tests.support.waiting import wait_for

from .conftest import ServerThread, sparse_file
from .test_interop import need, run, sha256

MIB = 1 << 20
LOOPBACK = "127.0.0.1"
AZ1, AZ2 = "az1.dc1", "az2.dc2"


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "pki"
    pki.init_ca(directory)
    for az in (AZ1, AZ2):
        pki.issue(directory, Identity(CertRole.AGENT, az), ip_addresses=[LOOPBACK])
    return directory


def agent_files(pki_dir: Path, az: str) -> TlsFiles:
    return pki.files_for(pki_dir, f"agent-{az}")


def gnutls_dir(target: Path, ca: Path, client: TlsFiles | None = None) -> Path:
    """What libnbd's tls-certificates and qemu's tls-creds-x509 dir want."""
    target.mkdir()
    (target / "ca-cert.pem").symlink_to(ca)
    if client is not None:
        (target / "client-cert.pem").symlink_to(client.cert)
        (target / "client-key.pem").symlink_to(client.key)
    return target


@pytest.fixture
def tls_server(pki_dir: Path, tmp_path: Path) -> Iterator[ServerThread]:
    context = tls.server_context(agent_files(pki_dir, AZ1), client_cert_required=False)
    srv = ServerThread(tls=context, tls_policy=TlsPolicy.REQUIRED)
    srv.server.handshake_timeout_s = 20.0
    srv.start()
    yield srv
    srv.stop()
    for export in srv.exports.values():
        if isinstance(export, FileExport):
            export.close()


@pytest.fixture
def tls_disk(tls_server: ServerThread, tmp_path: Path) -> tuple[str, Path]:
    path = sparse_file(tmp_path / "disk.img", 32 * MIB)
    name = "att-" + os.urandom(8).hex()
    tls_server.exports[name] = FileExport(path)
    return name, path


def nbds_uri(server: ServerThread, name: str, creds: Path) -> str:
    return f"nbds://{LOOPBACK}:{server.port}/{name}?tls-certificates={creds}"


# -- our client --------------------------------------------------------------------


def test_our_client_over_tls_reads_what_it_wrote_and_the_server_knows_who_it_is(
    tls_server: ServerThread, tls_disk: tuple[str, Path], pki_dir: Path
) -> None:
    name, path = tls_disk
    data = os.urandom(4 * MIB)

    async def scenario() -> None:
        user = tls.public_client_context(pki_dir / "ca.pem")
        async with await NbdClient.connect(LOOPBACK, tls_server.port, name, tls=user) as client:
            assert client.ssl_object is not None and client.ssl_object.version() in ("TLSv1.2", "TLSv1.3")
            assert tls.require_peer(client.ssl_object, CertRole.AGENT, AZ1).az == AZ1
            await asyncio.gather(*(client.write(i * MIB, data[i * MIB : (i + 1) * MIB]) for i in range(4)))
            await client.flush()
            reads = await asyncio.gather(*(client.read(i * MIB, MIB) for i in range(4)))
            assert b"".join(reads) == data
        agent = tls.client_context(agent_files(pki_dir, AZ2), check_hostname=False)
        async with await NbdClient.connect(LOOPBACK, tls_server.port, name, tls=agent) as client:
            assert await client.read(0, 4 * MIB) == data

    asyncio.run(scenario())
    assert tls_server.peers == [None, Identity(CertRole.AGENT, AZ2)]
    assert path.read_bytes()[: 4 * MIB] == data


def test_plaintext_client_is_refused_with_tls_reqd(
    tls_server: ServerThread, tls_disk: tuple[str, Path]
) -> None:
    name, _ = tls_disk

    async def scenario() -> None:
        with pytest.raises(NbdOptionRefused) as refused:
            await NbdClient.connect(LOOPBACK, tls_server.port, name)
        assert refused.value.reply == Reply.ERR_TLS_REQD

    asyncio.run(scenario())
    assert tls_server.peers == []  # the export name was never even looked up


def test_our_client_refuses_a_server_its_ca_did_not_issue(
    tls_server: ServerThread, tls_disk: tuple[str, Path], tmp_path: Path
) -> None:
    pki.init_ca(tmp_path / "foreign")
    name, _ = tls_disk

    async def scenario() -> None:
        with pytest.raises(ssl.SSLError):
            await NbdClient.connect(
                LOOPBACK,
                tls_server.port,
                name,
                tls=tls.public_client_context(tmp_path / "foreign" / "ca.pem"),
            )

    asyncio.run(scenario())


# -- GnuTLS clients ------------------------------------------------------------------


@pytest.mark.interop
def test_nbdinfo_with_tls_and_plaintext_refused(
    tls_server: ServerThread, tls_disk: tuple[str, Path], pki_dir: Path, tmp_path: Path
) -> None:
    nbdinfo = need("nbdinfo", "libnbd-bin")
    name, _ = tls_disk
    user = gnutls_dir(tmp_path / "user", pki_dir / "ca.pem")
    assert run(nbdinfo, "--size", nbds_uri(tls_server, name, user)).strip() == str(32 * MIB)
    agent = gnutls_dir(tmp_path / "agent", pki_dir / "ca.pem", agent_files(pki_dir, AZ2))
    assert run(nbdinfo, "--size", nbds_uri(tls_server, name, agent)).strip() == str(32 * MIB)
    plain = subprocess.run(
        [nbdinfo, "--size", f"nbd://{LOOPBACK}:{tls_server.port}/{name}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert plain.returncode != 0
    assert "TLS" in plain.stderr, plain.stderr
    assert tls_server.peers == [None, Identity(CertRole.AGENT, AZ2)]


@pytest.mark.interop
def test_nbdcopy_round_trip_over_tls(
    tls_server: ServerThread, tls_disk: tuple[str, Path], pki_dir: Path, tmp_path: Path
) -> None:
    nbdcopy = need("nbdcopy", "libnbd-bin")
    name, path = tls_disk
    source = sparse_file(tmp_path / "src.img", 32 * MIB)
    with open(source, "r+b") as f:
        for i in range(4):
            f.seek(i * 8 * MIB + MIB)
            f.write(os.urandom(2 * MIB))
    creds = gnutls_dir(tmp_path / "user", pki_dir / "ca.pem")
    uri = nbds_uri(tls_server, name, creds)
    run(nbdcopy, str(source), uri, timeout=120)
    assert sha256(path) == sha256(source)
    back = tmp_path / "back.img"
    run(nbdcopy, uri, str(back), timeout=120)
    assert sha256(back) == sha256(source)


@pytest.mark.interop
def test_qemu_img_over_tls_with_and_without_a_client_certificate(
    tls_server: ServerThread, tls_disk: tuple[str, Path], pki_dir: Path, tmp_path: Path
) -> None:
    qemu_img = need("qemu-img", "qemu-utils")
    name, path = tls_disk
    source = tmp_path / "src.img"
    source.write_bytes(os.urandom(4 * MIB) + bytes(28 * MIB))
    for label, client in (("user", None), ("agent", agent_files(pki_dir, AZ2))):
        creds = gnutls_dir(tmp_path / label, pki_dir / "ca.pem", client)
        tls_obj = f"tls-creds-x509,id=tls0,endpoint=client,dir={creds}"
        target = f"driver=nbd,host={LOOPBACK},port={tls_server.port},export={name},tls-creds=tls0"
        run(qemu_img, "convert", "-n", "--object", tls_obj, "-f", "raw", str(source),
            "--target-image-opts", target, timeout=120)  # fmt: skip
        assert sha256(path) == sha256(source)
        back = tmp_path / f"back-{label}.img"
        run(
            qemu_img,
            "convert",
            "--object",
            tls_obj,
            "--image-opts",
            target,
            "-O",
            "raw",
            str(back),
            timeout=120,
        )
        assert sha256(back) == sha256(source)
    plain = subprocess.run(
        [qemu_img, "info", f"nbd://{LOOPBACK}:{tls_server.port}/{name}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert plain.returncode != 0


# -- hostile peers ---------------------------------------------------------------


def _negotiate_to_starttls(port: int) -> socket.socket:
    """A raw client that got the server's ACK to STARTTLS, and nothing more."""
    sock = socket.create_connection((LOOPBACK, port), timeout=10)
    greeting = _recv_exactly(sock, 18)
    assert struct.unpack(">QQH", greeting)[:2] == (c.NBDMAGIC, c.IHAVEOPT)
    sock.sendall(struct.pack(">I", 3) + struct.pack(">QII", c.IHAVEOPT, Option.STARTTLS, 0))
    reply = _recv_exactly(sock, 20)
    assert struct.unpack(">QIII", reply)[2] == Reply.ACK
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "server closed"
        data += chunk
    return data


def _client_hello(server_hostname: str | None = None) -> bytes:
    """The first flight of a real TLS client, to cut short."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the server ends the connection (EOF or reset) within the socket timeout."""
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def _serves(server: ServerThread, name: str, pki_dir: Path) -> bool:
    async def scenario() -> bool:
        ctx = tls.public_client_context(pki_dir / "ca.pem")
        async with await NbdClient.connect(LOOPBACK, server.port, name, tls=ctx) as client:
            await client.write(0, b"ok" * 2048)
            return await client.read(0, 4096) == b"ok" * 2048

    return asyncio.run(scenario())


def test_a_handshake_left_hanging_blocks_nobody(
    tls_server: ServerThread, tls_disk: tuple[str, Path], pki_dir: Path
) -> None:
    name, _ = tls_disk
    hello = _client_hello()
    stalled = []
    for cut in (0, 5, len(hello) // 2):  # nothing, a record header, half a ClientHello
        sock = _negotiate_to_starttls(tls_server.port)
        sock.sendall(hello[:cut])
        stalled.append(sock)
    try:
        assert _serves(tls_server, name, pki_dir)  # while three handshakes hang
        # the good client's connection ends; the three hanging ones are still there
        wait_for("3 connections", lambda: tls_server.call(tls_server.server.connection_count) == 3)
    finally:
        for sock in stalled:
            sock.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=4096))
def test_random_bytes_instead_of_a_tls_handshake_close_that_connection_only(
    tls_server: ServerThread, tls_disk: tuple[str, Path], pki_dir: Path, garbage: bytes
) -> None:
    sock = _negotiate_to_starttls(tls_server.port)
    try:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        assert _closed_by_server(sock)
    finally:
        sock.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=1000), tail=st.binary(max_size=64))
def test_truncated_or_corrupted_handshakes_close_that_connection_only(
    tls_server: ServerThread, tls_disk: tuple[str, Path], cut: int, tail: bytes
) -> None:
    hello = _client_hello(LOOPBACK)
    sock = _negotiate_to_starttls(tls_server.port)
    try:
        sock.sendall(hello[: cut % (len(hello) + 1)] + tail)
        sock.shutdown(socket.SHUT_WR)
        assert _closed_by_server(sock)
    finally:
        sock.close()


def test_after_the_hostile_peers_the_server_still_serves(
    tls_server: ServerThread, tls_disk: tuple[str, Path], pki_dir: Path
) -> None:
    name, _ = tls_disk
    for garbage in (b"\x16\x03\x01\xff\xff" + os.urandom(64), os.urandom(300), b""):
        sock = _negotiate_to_starttls(tls_server.port)
        sock.sendall(garbage)
        sock.close()
    raw = socket.create_connection((LOOPBACK, tls_server.port), timeout=10)
    raw.sendall(os.urandom(100))  # not even NBD
    raw.close()
    assert _serves(tls_server, name, pki_dir)
    tls_server.call(lambda: None)  # the loop is alive


def test_backpressure_over_tls_serves_every_pipelined_request(
    tls_server: ServerThread, tls_disk: tuple[str, Path], pki_dir: Path
) -> None:
    """Over TLS, reading stops while replies queue up (output and in-flight bounds) and
    resumes: every pipelined request is still served, large writes among large reads."""
    name, path = tls_disk
    data = os.urandom(16 * MIB)
    path.write_bytes(data + bytes(16 * MIB))
    tls_server.server.max_output_bytes = 256 * 1024
    tls_server.server.max_in_flight = 4

    async def scenario() -> None:
        ctx = tls.public_client_context(pki_dir / "ca.pem")
        async with await NbdClient.connect(LOOPBACK, tls_server.port, name, tls=ctx) as client:
            chunk = 128 * 1024
            reads = await asyncio.gather(*(client.read(off, chunk) for off in range(0, 16 * MIB, chunk)))
            assert b"".join(reads) == data
            await asyncio.gather(*(client.write(off, b"w" * 4096) for off in range(0, MIB, 4096)))
            assert await client.read(0, MIB) == b"w" * MIB
            # Large writes (after each, the server reads only a little past the next header)
            # mixed with large reads that fill the output bound.
            block = os.urandom(256 * 1024)
            ops = []
            for i in range(32):
                ops.append(client.write(16 * MIB + i * len(block), block))
                ops.append(client.read(i * chunk, chunk))
            await asyncio.gather(*ops)
            assert await client.read(16 * MIB, len(block)) == block

    asyncio.run(scenario())
