"""A real standalone agent with its control API on mutual TLS: only the controller's
certificate gets an answer; a rotation of every certificate and of the CA happens
under the running agent (same pid) with no refused controller call."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openevs.agent.client import HttpAgentClient
from openevs.contract import AgentUnavailable
from openevs.security import pki
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles
from openevs.security.tls import client_context, server_context
from tests.integration.agent.support import AgentProcess

AZ = "az1.dc1"
AGENT = Identity(CertRole.AGENT, AZ)
CONTROLLER = Identity(CertRole.CONTROLLER)


def issue(pki_dir: Path, identity: Identity, force: bool = False) -> TlsFiles:
    return pki.issue(pki_dir, identity, ip_addresses=["127.0.0.1"], force=force).files


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "pki")
    for identity in (AGENT, CONTROLLER, Identity(CertRole.AGENT, "az2.dc2")):
        issue(tmp_path / "pki", identity)
    pki.issue(tmp_path / "pki", Identity(CertRole.WITNESS), ip_addresses=["127.0.0.1"])
    return tmp_path / "pki"


@pytest.fixture
def tls_agent(tmp_path: Path, pki_dir: Path) -> Iterator[AgentProcess]:
    files, controller = pki.files_for(pki_dir, "agent-az1.dc1"), pki.files_for(pki_dir, "controller")
    proc = AgentProcess(tmp_path, AZ, tls=files, controller_tls=controller)
    proc.start()
    yield proc
    proc.kill()
    proc.client.close()


def raw_get(url: str, ctx: ssl.SSLContext) -> httpx.Response:
    with httpx.Client(verify=ctx, timeout=5) as client:
        return client.get(f"{url}/volumes")


def refused(url: str, ctx: ssl.SSLContext) -> bool:
    try:
        raw_get(url, ctx)
    except (httpx.TransportError, ssl.SSLError):
        return True
    return False


def test_the_controller_is_answered(tls_agent: AgentProcess) -> None:
    assert tls_agent.client.health().az == AZ
    tls_agent.client.create_volume("vol-1", 1 << 20)
    assert [v.volume_id for v in tls_agent.client.list_volumes()] == ["vol-1"]


def test_everyone_else_is_refused_and_learns_nothing(
    tls_agent: AgentProcess, pki_dir: Path, tmp_path: Path
) -> None:
    tls_agent.client.create_volume("vol-secret", 1 << 20)
    # no certificate at all
    anonymous = ssl.create_default_context(cafile=pki_dir / "ca.pem")
    anonymous.check_hostname = False
    assert refused(tls_agent.url, anonymous)
    # valid certificates of the same CA, of the wrong roles
    for name in ("agent-az1.dc1", "agent-az2.dc2"):
        assert refused(tls_agent.url, client_context(pki.files_for(pki_dir, name), check_hostname=False))
    # a controller certificate of another CA
    pki.init_ca(tmp_path / "foreign")
    foreign = issue(tmp_path / "foreign", CONTROLLER)
    foreign_files = TlsFiles(ca=pki_dir / "ca.pem", cert=foreign.cert, key=foreign.key)
    foreign_ctx = client_context(foreign_files, check_hostname=False)
    assert refused(tls_agent.url, foreign_ctx)
    # plain HTTP to the TLS port
    with socket.create_connection(("127.0.0.1", int(tls_agent.url.rsplit(":", 1)[1])), timeout=5) as sock:
        sock.sendall(b"GET /volumes HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert b"vol-secret" not in answer and b"openevs" not in answer.lower()
    # the agent is still there for the controller, and saw no request
    assert [v.volume_id for v in tls_agent.client.list_volumes()] == ["vol-secret"]
    assert "refused" in tls_agent.log.read_text()


def _impostor_https(files: TlsFiles) -> tuple[http.server.HTTPServer, int]:
    """Any HTTPS server of the deployment (here: one holding `files`) answering 200 to all."""

    class Ok(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn: the client checks the open connection

        def do_GET(self) -> None:
            body = b'{"volumes": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    server.socket = server_context(files).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.mark.parametrize(("server_cert", "why"), [("agent-az2.dc2", "agent of az1.dc1 is expected"),
                                                   ("witness", "agent certificate is required")])
def test_the_controller_refuses_a_server_that_is_not_this_agent(
    pki_dir: Path, server_cert: str, why: str
) -> None:
    """A server with a valid certificate of the deployment, but not of the agent of az1.
    (An agent refuses to start with a certificate that is not its own, so the
    impostor is any HTTPS server holding another component's certificate.)"""
    server, port = _impostor_https(pki.files_for(pki_dir, server_cert))
    controller = pki.files_for(pki_dir, "controller")
    client = HttpAgentClient(AZ, f"https://127.0.0.1:{port}", timeout_s=5, tls=controller)
    try:
        with pytest.raises(AgentUnavailable, match=why):
            client.list_volumes()
    finally:
        client.close()
        server.shutdown()
        server.server_close()


def test_an_agent_refuses_to_start_with_another_components_certificate(tmp_path: Path, pki_dir: Path) -> None:
    files = pki.files_for(pki_dir, "agent-az2.dc2")
    cmd = [sys.executable, "-m", "openevs.agent", "--az", AZ, "--pool", str(tmp_path / "p"),
           "--listen", "127.0.0.1:0", "--nbd", "127.0.0.1:0",
           "--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "is not the certificate of agent:az1.dc1" in done.stderr


def test_a_reachable_plaintext_control_api_is_refused(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "openevs.agent", "--az", AZ, "--pool", str(tmp_path / "p"),
           "--listen", "0.0.0.0:0", "--nbd", "127.0.0.1:0"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "would answer anyone" in done.stderr


def test_rotation_under_a_running_agent(tls_agent: AgentProcess, pki_dir: Path, tmp_path: Path) -> None:
    """docs/security.md, "Rotating the CA without downtime", step by step, with the agent
    re-reading its files on the next connection, and the controller's one long-lived
    client re-reading its own; the controller gets an answer at every step."""
    pid = tls_agent.proc.pid if tls_agent.proc else None
    old_controller = tmp_path / "old-controller"
    old_controller.mkdir()
    for suffix in ("pem", "key"):
        shutil.copy2(pki_dir / f"controller.{suffix}", old_controller / f"controller.{suffix}")
    old = old_controller
    old_files = TlsFiles(ca=old / "ca.pem", cert=old / "controller.pem", key=old / "controller.key")

    def controller_call(files: TlsFiles) -> None:
        with HttpAgentClient(AZ, tls_agent.url, tls=files) as client:
            assert client.health().az == AZ

    pki.rotate_ca(pki_dir)  # 1-2: every component's ca.pem is now new + old
    shutil.copy2(pki_dir / "ca.pem", old_files.ca)  # the thief trusts both: refusals come from the agent
    assert tls_agent.client.health().az == AZ
    issue(pki_dir, AGENT, force=True)  # 3: reissue every certificate
    issue(pki_dir, CONTROLLER, force=True)
    assert tls_agent.client.health().az == AZ
    controller_call(old_files)  # not yet dropped: the old CA is still trusted
    pki.drop_old_cas(pki_dir, force=True)  # 4-5
    assert tls_agent.client.health().az == AZ
    assert refused(tls_agent.url, client_context(old_files, check_hostname=False))
    assert tls_agent.proc is not None and tls_agent.proc.pid == pid and tls_agent.proc.poll() is None
