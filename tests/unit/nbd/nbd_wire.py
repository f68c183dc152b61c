"""Client-side byte builders for feeding the sans-IO server core in tests (built from the spec)."""

from __future__ import annotations

import struct

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.constants import Command, Info, Option, Reply
from openevs.agent.nbd.events import NEED_DATA, Event
from openevs.agent.nbd.protocol import ServerConnection

GREETING_BYTES = 18
CLIENT_FLAGS = struct.pack(">I", c.FLAG_C_FIXED_NEWSTYLE | c.FLAG_C_NO_ZEROES)


def string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(data)) + data


def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", c.IHAVEOPT, opt, len(data)) + data


def go(name: str, infos: tuple[int, ...] = (Info.BLOCK_SIZE,), opt: int = Option.GO) -> bytes:
    body = string(name) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)
    return option(opt, body)


def meta(opt: int, name: str, queries: list[str]) -> bytes:
    body = string(name) + struct.pack(">I", len(queries)) + b"".join(string(q) for q in queries)
    return option(opt, body)


def request(
    kind: int, cookie: int = 1, offset: int = 0, length: int = 0, flags: int = 0, payload: bytes = b""
) -> bytes:
    return struct.pack(">IHHQQI", c.REQUEST_MAGIC, flags, kind, cookie, offset, length) + payload


def events(conn: ServerConnection) -> list[Event]:
    out: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)  # type: ignore[arg-type]
    return out


def option_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """(option, reply type, payload) of every option reply in `data`."""
    replies = []
    pos = 0
    while pos < len(data):
        magic, opt, rtype, length = struct.unpack_from(">QIII", data, pos)
        assert magic == c.OPTION_REPLY_MAGIC
        pos += 20
        replies.append((opt, Reply(rtype), data[pos : pos + length]))
        pos += length
    return replies


def simple_replies(data: bytes) -> list[tuple[int, int]]:
    """(error, cookie) of simple replies without payload."""
    return [struct.unpack_from(">IIQ", data, i)[1:] for i in range(0, len(data), 16)]


def chunks(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(flags, type, cookie, payload) of structured chunks in `data`."""
    out = []
    pos = 0
    while pos < len(data):
        magic, flags, ctype, cookie, length = struct.unpack_from(">IHHQI", data, pos)
        assert magic == c.STRUCTURED_REPLY_MAGIC
        pos += 20
        out.append((flags, ctype, cookie, data[pos : pos + length]))
        pos += length
    return out


def connected(
    *, structured: bool = True, meta_ctx: bool = True, read_only: bool = False, size: int = 1 << 20
) -> ServerConnection:
    """A connection driven through the handshake into transmission on export "disk"."""
    conn = ServerConnection()
    data = CLIENT_FLAGS
    if structured:
        data += option(Option.STRUCTURED_REPLY)
        if meta_ctx:
            data += meta(Option.SET_META_CONTEXT, "disk", [c.BASE_ALLOCATION])
    data += go("disk")
    conn.receive_data(data)
    evs = events(conn)
    assert [type(e).__name__ for e in evs] == ["ExportLookup"]
    conn.export_found(size_bytes=size, read_only=read_only)
    assert [type(e).__name__ for e in events(conn)] == ["ExportChosen"]
    conn.data_to_send()
    return conn


__all__ = ["Command", "GREETING_BYTES"]
