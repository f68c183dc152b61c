"""Hypothesis against a running agent's mutual-TLS control API (a real process on loopback).

- random bytes instead of a TLS handshake, and real ClientHellos cut short or
  mutated: each connection is closed, nothing of HTTP comes back;
- clients that stop in the middle of the handshake hold their connection open
  while the controller's calls go on being answered (no hang of the others);
- with the controller's certificate, random methods, paths and bodies: never a
  5xx, every error an `ErrorBody`.

After every example the agent is alive and answers the controller.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from openevs.contract import ErrorBody
from openevs.security import pki
from openevs.security.identity import CertRole, Identity
from openevs.security.tls import client_context
from tests.integration.agent.support import AgentProcess
from tests.support.budget import examples

pytestmark = pytest.mark.faults

AZ = "az1.dc1"
FUZZ = settings(max_examples=examples(50, 120), derandomize=True, deadline=None, database=None,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    d = root / "pki"
    pki.init_ca(d)
    pki.issue(d, Identity(CertRole.AGENT, AZ), ip_addresses=["127.0.0.1"])
    pki.issue(d, Identity(CertRole.CONTROLLER))
    files, controller = pki.files_for(d, f"agent-{AZ}"), pki.files_for(d, "controller")
    proc = AgentProcess(root, AZ, tls=files, controller_tls=controller)
    proc.start()
    proc.client.create_volume("vol-a", 1 << 20)
    yield proc
    proc.kill()
    proc.client.close()


def address(agent: AgentProcess) -> tuple[str, int]:
    host, port = agent.url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def healthy(agent: AgentProcess) -> None:
    assert agent.proc is not None and agent.proc.poll() is None, "the agent died"
    assert agent.client.health().az == AZ


def client_hello(server_name: str | None = None) -> bytes:
    """The first flight of a real TLS client (what a handshake starts with)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


HELLO = client_hello()


def send_and_read(addr: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(addr, timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        got = b""
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                got += chunk
        return got


@st.composite
def broken_hellos(draw: st.DrawFn) -> bytes:
    hello = bytearray(HELLO)
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(hello) - 1))
        hello[i] = draw(st.integers(0, 255))
    return bytes(hello[: draw(st.integers(0, len(hello)))])


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), broken_hellos(), st.just(b"GET /volumes HTTP/1.1\r\n\r\n")))
def test_garbage_and_cut_handshakes_are_closed(agent: AgentProcess, data: bytes) -> None:
    got = send_and_read(address(agent), data)
    assert b"HTTP/" not in got and b"vol-a" not in got
    healthy(agent)


def test_stalled_handshakes_do_not_hold_up_the_controller(agent: AgentProcess) -> None:
    stalled = []
    try:
        for i in range(40):
            sock = socket.create_connection(address(agent), timeout=5)
            sock.sendall(HELLO[: (i * 37) % len(HELLO)])  # some say nothing, some stop mid-hello
            stalled.append(sock)
        for _ in range(20):
            healthy(agent)
            assert [v.volume_id for v in agent.client.list_volumes()] == ["vol-a"]
    finally:
        for sock in stalled:
            sock.close()


PATHS = ["/health", "/volumes", "/volumes/{v}", "/volumes/{v}/grow", "/exports", "/exports/{v}",
         "/volumes/{v}/replication", "/replication", "/volumes/{v}/replication/dirty",
         "/volumes/{v}/replication/pause", "/volumes/{v}/replication/resume", "/groups/{v}/pause",
         "/groups/{v}/resume", "/replication/batch", "/{v}", "/volumes/{v}/{v}"]  # fmt: skip
BATCHES = [  # POST /replication/batch: unknown volume, an id that is a path
    b'{"items": [{"volume_id": "vol-x", "request": {"role": "standalone", "epoch": 0}}]}',
    b'{"items": [{"volume_id": "../vol-a", "request": {"role": "primary", "epoch": 1, "mirroring": false}}]}',
]
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    method = draw(st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]))
    printable = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%")
    segment = draw(st.sampled_from(["vol-a", "vol-x", "a" * 300, "..", "%00", "vol%2Fb"])
                   | st.text(printable, min_size=1, max_size=40))  # fmt: skip
    path = draw(st.sampled_from(PATHS)).replace("{v}", segment)
    body = draw(st.one_of(st.binary(max_size=300), JSONISH.map(lambda v: json.dumps(v).encode()),
                          st.sampled_from([b'{"size_bytes": 1048576}', b'{"size_bytes": -1}',
                                           b'{"volume_id": "vol-a", "read_only": true}',
                                           *BATCHES])))  # fmt: skip
    return method, path, body


@pytest.fixture(scope="module")
def controller_http(agent: AgentProcess) -> Iterator[httpx.Client]:
    assert agent.controller_tls is not None
    with httpx.Client(base_url=agent.url, verify=client_context(agent.controller_tls), timeout=10) as client:
        yield client


@FUZZ
@given(request=requests())
def test_no_request_of_the_controller_gets_a_5xx(
    agent: AgentProcess, controller_http: httpx.Client, request: tuple[str, str, bytes]
) -> None:
    method, path, body = request
    r = controller_http.request(method, path, content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, f"{method} {path} {body[:80]!r}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        ErrorBody.model_validate_json(r.content)
    healthy(agent)
