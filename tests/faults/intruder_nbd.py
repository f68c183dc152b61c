"""The intruder's tries on an agent's NBD port (TLS required), from the outsider namespace.

For each export name it was given (`exports`: revoked ones, guesses, link
exports; `plain_only`: valid names it stole, which are a user's credential
once inside TLS, so only clear text is tried with them):
- in clear text, NBD_OPT_GO and NBD_OPT_LIST must be answered
  NBD_REP_ERR_TLS_REQD and NBD_OPT_EXPORT_NAME must close the connection;
- after NBD_OPT_STARTTLS, with the credential it holds (none, another CA's,
  one the CA rotation retired), NBD_OPT_GO must fail (the handshake, or an
  error reply such as NBD_REP_ERR_UNKNOWN);
and for the link export, the replication link upgrade (OPT_OPENEVS_LINK)
followed by its mutual TLS and an OPEN of the export must give nothing.

Outcomes: "refused", or "answered" with what came back. No server is verified.
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

from openevs.agent.mirror import wire
from openevs.agent.nbd import constants as c
from openevs.agent.nbd.constants import Option, Reply

TIMEOUT_S = 5


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return got


def _greet(sock: socket.socket) -> None:
    magic, opt, _flags = c.GREETING.unpack(_recv_exact(sock, c.GREETING.size))
    assert magic == c.NBDMAGIC and opt == c.IHAVEOPT
    sock.sendall(c.CLIENT_FLAGS.pack(c.FLAG_C_FIXED_NEWSTYLE | c.FLAG_C_NO_ZEROES))


def _option(sock: socket.socket, option: int, data: bytes = b"") -> int:
    """Send one option; the type of the final reply (replies of type SERVER/INFO are skipped)."""
    sock.sendall(c.OPTION_HEADER.pack(c.IHAVEOPT, option, len(data)) + data)
    while True:
        _magic, _opt, kind, length = c.OPTION_REPLY_HEADER.unpack(
            _recv_exact(sock, c.OPTION_REPLY_HEADER.size)
        )
        _recv_exact(sock, length)
        if kind not in (Reply.SERVER, Reply.INFO):
            return int(kind)


def _go(name: str) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0)


def _reply_name(kind: int) -> str:
    try:
        return Reply(kind).name
    except ValueError:
        return hex(kind)


def _tried(fn: Any, refused_if: Any) -> dict[str, Any]:
    try:
        got = fn()
    except (OSError, ssl.SSLError, ConnectionError, struct.error) as exc:
        return {"outcome": "refused", "why": type(exc).__name__}
    return {"outcome": "refused" if refused_if(got) else "answered", "got": got}


def plain_tries(host: str, port: int, name: str) -> list[dict[str, Any]]:
    def ask(option: int, data: bytes) -> str:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
            _greet(sock)
            return _reply_name(_option(sock, option, data))

    def export_name() -> str:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
            _greet(sock)
            sock.sendall(c.OPTION_HEADER.pack(c.IHAVEOPT, Option.EXPORT_NAME, len(name)) + name.encode())
            return repr(sock.recv(64))  # b'' once the server closed

    return [
        {"try": "plain GO", **_tried(lambda: ask(Option.GO, _go(name)), lambda r: r == "ERR_TLS_REQD")},
        {"try": "plain LIST", **_tried(lambda: ask(Option.LIST, b""), lambda r: r == "ERR_TLS_REQD")},
        {"try": "plain EXPORT_NAME", **_tried(export_name, lambda r: r == "b''")},
    ]


def tls_go(host: str, port: int, name: str, ctx: ssl.SSLContext) -> dict[str, Any]:
    def go() -> str:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as raw:
            _greet(raw)
            if _option(raw, Option.STARTTLS) != Reply.ACK:
                return "STARTTLS refused"
            with ctx.wrap_socket(raw) as sock:
                return _reply_name(_option(sock, Option.GO, _go(name)))

    return {"try": "TLS GO", **_tried(go, lambda r: r.startswith("ERR_") or r == "STARTTLS refused")}


def link_open(host: str, port: int, name: str, ctx: ssl.SSLContext) -> dict[str, Any]:
    def upgrade() -> str:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as raw:
            raw.sendall(wire.upgrade_request(_recv_exact(raw, c.GREETING.size), "intruder"))
            wire.check_upgrade_reply(_recv_exact(raw, c.OPTION_REPLY_HEADER.size))
            with ctx.wrap_socket(raw) as sock:
                payload = f"{name}~intruder".encode()
                sock.sendall(wire.encode_request(wire.Kind.OPEN, 1, length=len(payload)) + payload)
                return repr(sock.recv(64))

    return {"try": "link OPEN", **_tried(upgrade, lambda r: r == "b''")}


def try_nbd(target: dict[str, Any], ctx: ssl.SSLContext) -> list[dict[str, Any]]:
    host, port = target["host"], target["port"]
    out = []
    for name in target.get("exports", []):
        for result in [*plain_tries(host, port, name), tls_go(host, port, name, ctx)]:
            out.append({"export": name[:8], **result})
    for name in target.get("plain_only", []):
        out += [{"export": name[:8], **result} for result in plain_tries(host, port, name)]
    for name in target.get("tls_only", []):  # the control: a real user's name over TLS
        out.append({"export": name[:8], **tls_go(host, port, name, ctx)})
    for name in target.get("links", []):
        out.append({"export": name[:8], **link_open(host, port, name, ctx)})
    return out
