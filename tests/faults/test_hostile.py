"""Hostile input against a live controller and its running agents.

- NBD fuzzing: hypothesis byte streams over real sockets to a running agent,
  in the handshake phase and, after a valid handshake, in the transmission
  phase; after each example the agent is up and a good client reads back
  what it wrote.
- Dead or foreign tokens are refused on every route of the OpenAPI document.
- NBD export names: revoked with their attachment, unknown names refused,
  NBD_OPT_LIST lists nothing.

Oversized bodies and headers are covered by
`tests/integration/api/test_errors.py::test_big_bodies_are_413`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client import NbdClient
from openevs.agent.nbd.constants import Option, Reply
from openevs.agent.nbd.errors import NbdConnectionClosed
from openevs.db.models import Agent
from tests.integration.api.conftest import assert_client_error, attach, create_server, second_project
from tests.integration.conftest import Api
from tests.integration.replication.test_group_api import GROUPS, make_group, make_pairs
from tests.support.budget import examples

pytestmark = pytest.mark.faults

EXAMPLES = examples(60, 150)
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
PROBE_OFFSET = 64 * 1024 * 1024  # the good client's region; fuzzed writes may land anywhere


def nbd_address(api: Api, az: str) -> tuple[str, int]:
    with api.runtime.db.session() as session:
        row = session.get(Agent, az)
        assert row is not None and row.nbd_port, f"agent of {az} has no NBD address"
        return row.nbd_host, row.nbd_port


def option(opt: int, data: bytes = b"") -> bytes:
    return c.OPTION_HEADER.pack(c.IHAVEOPT, opt, len(data)) + data


def name_data(name: str) -> bytes:
    return c.U32.pack(len(name)) + name.encode()


def go_option(name: str) -> bytes:
    return option(Option.GO, name_data(name) + c.U16.pack(0))


def drain(sock: socket.socket, idle_s: float = 0.05, limit_s: float = 1.0) -> bytes:
    """Read what the server says until it closes or goes quiet."""
    data = b""
    sock.settimeout(idle_s)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return data


def greet(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=5)
    head = b""
    while len(head) < c.GREETING.size:
        chunk = sock.recv(c.GREETING.size - len(head))
        assert chunk, "agent closed during the greeting"
        head += chunk
    assert c.GREETING.unpack(head)[:2] == (c.NBDMAGIC, c.IHAVEOPT)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise NbdConnectionClosed("closed")
        data += chunk
    return data


def read_option_replies(sock: socket.socket, opt: int) -> list[tuple[int, bytes]]:
    """Replies to one option up to its final one (ACK or an error)."""
    replies = []
    while True:
        magic, echoed, reply, length = c.OPTION_REPLY_HEADER.unpack(recv_exactly(sock, 20))
        assert (magic, echoed) == (c.OPTION_REPLY_MAGIC, opt)
        replies.append((reply, recv_exactly(sock, length)))
        if reply == Reply.ACK or reply & (1 << 31):
            return replies


def transmitting(addr: tuple[str, int], name: str) -> socket.socket:
    """A raw connection past a valid handshake (no structured replies) on export `name`."""
    sock = greet(addr)
    sock.sendall(c.CLIENT_FLAGS.pack(c.FLAG_C_FIXED_NEWSTYLE | c.FLAG_C_NO_ZEROES) + go_option(name))
    replies = read_option_replies(sock, Option.GO)
    assert replies[-1][0] == Reply.ACK, replies
    return sock


def check_agent(api: Api, addr: tuple[str, int], name: str, tag: int) -> None:
    """The agent is up and a good client reads back what it writes."""
    assert api.runtime.agent("az1.dc1").health()

    async def probe() -> None:
        client = await asyncio.wait_for(NbdClient.connect(*addr, name), 10)
        try:
            data = struct.pack(">Q", tag) * 512
            await client.write(PROBE_OFFSET, data, fua=True)
            assert await client.read(PROBE_OFFSET, len(data)) == data
        finally:
            await client.close()

    asyncio.run(probe())


@st.composite
def option_sequences(draw: st.DrawFn, name: str) -> bytes:
    """A valid client flags word and options, then mutated (flips, cuts, inserts)."""
    pool = [
        option(Option.STRUCTURED_REPLY),
        option(Option.LIST),
        option(Option.SET_META_CONTEXT, name_data(name) + c.U32.pack(1) + name_data(c.BASE_ALLOCATION)),
        option(Option.LIST_META_CONTEXT, name_data(name) + c.U32.pack(0)),
        option(Option.INFO, name_data(name) + c.U16.pack(1) + c.U16.pack(c.Info.BLOCK_SIZE)),
        option(Option.INFO, name_data("nope") + c.U16.pack(0)),
        option(Option.STARTTLS),
        option(Option.EXTENDED_HEADERS),
        option(draw(st.integers(0, 2**32 - 1)), draw(st.binary(max_size=64))),
        go_option(name),
        option(Option.EXPORT_NAME, name.encode()),
        option(Option.ABORT),
    ]
    stream = bytearray(c.CLIENT_FLAGS.pack(draw(st.sampled_from([0, 1, 3, 2**32 - 1]))))
    for part in draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6)):
        stream += part
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        at = draw(st.integers(0, max(0, len(stream) - 1)))
        if kind == "flip" and stream:
            stream[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del stream[at:]
        elif kind == "insert":
            stream[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "length" and at + 4 <= len(stream):
            stream[at:at + 4] = c.U32.pack(draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 65536])))
    return bytes(stream)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Request headers, valid and not, each with or without its payload."""
    stream = b""
    for _ in range(draw(st.integers(1, 4))):
        magic = draw(st.sampled_from([c.REQUEST_MAGIC] * 4 + [0, 0x25609514]))
        flags = draw(st.sampled_from([0, c.CMD_FLAG_FUA, c.CMD_FLAG_DF, c.CMD_FLAG_REQ_ONE, 0xFFFF]))
        cmd = draw(st.integers(0, 12))
        edges = [2**30 - 512, 2**30, 2**63, 2**64 - 1]
        offset = draw(st.one_of(st.integers(0, 2**31), st.sampled_from(edges)))
        length = draw(st.one_of(st.integers(0, 65536), st.sampled_from([2**25, 2**32 - 1])))
        stream += c.REQUEST_HEADER.pack(magic, flags, cmd, draw(st.integers(0, 2**64 - 1)), offset, length)
        if cmd == c.Command.WRITE:
            stream += os.urandom(min(length, draw(st.integers(0, 65536))))
    if draw(st.booleans()):
        stream += draw(st.binary(max_size=256))
    return stream


def fuzz_export(api: Api) -> tuple[tuple[str, int], str]:
    vol = api.create_volume(size=1)
    name = "fuzz-" + os.urandom(8).hex()
    api.runtime.agent("az1.dc1").grant_export(name, vol["id"], False)
    return nbd_address(api, "az1.dc1"), name


def test_nbd_handshake_fuzzing(api: Api) -> None:
    addr, name = fuzz_export(api)
    started, tag = time.monotonic(), iter(range(10**6))

    @given(stream=st.one_of(st.binary(max_size=512), option_sequences(name)))
    @FUZZ
    def fuzz(stream: bytes) -> None:
        with contextlib.closing(greet(addr)) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(stream)
            drain(sock)
        check_agent(api, addr, name, next(tag))

    fuzz()
    print(f"\nNBD handshake fuzzing: {EXAMPLES} examples, {time.monotonic() - started:.1f} s")


def test_nbd_transmission_fuzzing(api: Api) -> None:
    addr, name = fuzz_export(api)
    started, tag = time.monotonic(), iter(range(10**6))

    @given(stream=st.one_of(requests(), st.binary(max_size=512)))
    @FUZZ
    def fuzz(stream: bytes) -> None:
        with contextlib.closing(transmitting(addr, name)) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(stream)
            drain(sock)
        check_agent(api, addr, name, next(tag))

    fuzz()
    print(f"\nNBD transmission fuzzing: {EXAMPLES} examples, {time.monotonic() - started:.1f} s")


# --- tokens everywhere -------------------------------------------------------

OPEN_ROUTES = {("GET", "/"), ("GET", "/v2"), ("GET", "/v3"), ("POST", "/v3/auth/tokens")}


def routes_with_real_ids(api: Api) -> list[tuple[str, str, str]]:
    """(method, template, URL) of every route of the OpenAPI document, path
    parameters filled with real ids of the token's project."""
    sid = create_server(api)["id"]
    pair_ids = make_pairs(api, 1)
    gid = make_group(api, pair_ids)
    vid = api.create_volume()["id"]
    assert attach(api, sid, vid).status_code == 200
    ids = {"project_id": api.project_id, "volume_id": vid, "server_id": sid, "replication_id": pair_ids[0],
           "group_id": gid, "type_id": "SSD", "snapshot_id": "0" * 32, "key": "k"}  # fmt: skip
    doc = api.client.get(f"{api.base}/openapi.json").json()
    routes = []
    for template, methods in doc["paths"].items():
        for method in methods:
            if method.upper() in ("GET", "POST", "PUT", "DELETE", "HEAD"):
                routes.append((method.upper(), template, api.base + template.format(**ids)))
    assert {t for _, t, _ in routes} >= {"/v2/{project_id}/os-vendor-replications/{replication_id}",
                                         GROUPS.replace("{p}", "{project_id}") + "/{group_id}/action"}
    return routes


def call(api: Api, method: str, url: str, token: str) -> Any:
    body = {} if method in ("POST", "PUT") else None
    return api.client.request(method, url, json=body, headers={"X-Auth-Token": token})


def test_foreign_expired_and_revoked_tokens_are_refused_everywhere(controller_factory: Any) -> None:
    api = controller_factory()
    routes = routes_with_real_ids(api)
    bob = second_project(api)
    revoked = api.login("admin", "admin-secret-1", "admin").token
    r = api.client.delete(f"{api.base}/v3/auth/tokens", headers={**api.headers, "X-Subject-Token": revoked})
    assert r.status_code == 204, r.text
    expired = controller_factory(token_ttl_s=1).token
    deadline = time.monotonic() + 15
    while api.client.get(api.url("/v2/{p}/volumes"), headers={"X-Auth-Token": expired}).status_code != 401:
        assert time.monotonic() < deadline, "token did not expire"
        time.sleep(0.1)

    failures = []
    for method, template, url in routes:
        anonymous = api.client.request(method, url, json={} if method in ("POST", "PUT") else None)
        if anonymous.status_code != 401:
            assert (method, template) in OPEN_ROUTES, f"{method} {template} needs no token"
            continue
        for what, token in (("revoked", revoked), ("expired", expired)):
            r = call(api, method, url, token)
            if r.status_code != 401:
                failures.append(f"{what}: {method} {template} -> {r.status_code} {r.text[:200]}")
        if "{project_id}" in template:
            r = call(api, method, url, bob.token)  # a URL naming another project
            if r.status_code != 400:
                failures.append(f"other project: {method} {template} -> {r.status_code} {r.text[:200]}")
            else:
                assert_client_error(r)
            own = url.replace(api.project_id, bob.project_id)  # A's ids under the caller's project
            if template.count("{") > 1 and "/types/" not in template:  # names a resource of A
                r = call(api, method, own, bob.token)  # (an empty body may be refused before the lookup)
                if r.status_code != 404 and not (method in ("POST", "PUT") and r.status_code == 400):
                    failures.append(f"A's ids: {method} {template} -> {r.status_code} {r.text[:200]}")
    assert not failures, "\n".join(failures)
    assert len(api.get(GROUPS).json()["replication_consistency_groups"]) == 1  # nothing was deleted


# --- NBD export names ----------------------------------------------------------


def connect(addr: tuple[str, int], name: str) -> NbdClient:
    return asyncio.run(asyncio.wait_for(NbdClient.connect(*addr, name), 10))


def assert_refused(addr: tuple[str, int], name: str) -> None:
    with contextlib.closing(greet(addr)) as sock:
        sock.sendall(c.CLIENT_FLAGS.pack(c.FLAG_C_FIXED_NEWSTYLE | c.FLAG_C_NO_ZEROES) + go_option(name))
        replies = read_option_replies(sock, Option.GO)
    assert [reply for reply, _ in replies] == [Reply.ERR_UNKNOWN], replies


def test_export_names_die_with_their_attachment(api: Api) -> None:
    vid = api.create_volume()["id"]
    sid = create_server(api)["id"]
    assert attach(api, sid, vid).status_code == 200
    addr = nbd_address(api, "az1.dc1")

    def initialize() -> str:
        r = api.post(f"/v2/{{p}}/volumes/{vid}/action", {"os-initialize_connection": {"connector": {}}})
        assert r.status_code == 200, r.text
        data = r.json()["connection_info"]["data"]
        assert (data["host"], data["port"]) == addr
        return str(data["export_name"])

    async def open_then_revoke(name: str, revoke: Any) -> None:
        client = await NbdClient.connect(*addr, name)
        await client.write(0, b"x" * 4096)
        await asyncio.to_thread(revoke)
        with pytest.raises((NbdConnectionClosed, ConnectionError)):
            for _ in range(50):  # the drop reaches the client within a request or two
                await client.read(0, 4096)
                await asyncio.sleep(0.02)
        await client.close()

    def terminate() -> None:
        r = api.post(f"/v2/{{p}}/volumes/{vid}/action", {"os-terminate_connection": {"connector": {}}})
        assert r.status_code == 202 or r.status_code == 200, r.text

    def detach() -> None:
        r = api.delete(f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments/{vid}")
        assert r.status_code == 202, r.text

    first = initialize()
    asyncio.run(open_then_revoke(first, terminate))
    assert_refused(addr, first)
    second = initialize()
    assert second != first
    asyncio.run(open_then_revoke(second, detach))
    assert_refused(addr, second)
    assert_refused(addr, "att-" + "A" * 32)
    assert_refused(addr, "")

    with contextlib.closing(greet(addr)) as sock:  # NBD_OPT_LIST names nothing
        sock.sendall(c.CLIENT_FLAGS.pack(c.FLAG_C_FIXED_NEWSTYLE) + option(Option.LIST))
        replies = read_option_replies(sock, Option.LIST)
    assert replies == [(Reply.ACK, b"")], replies
