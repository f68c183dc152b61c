"""Server-side byte builders for feeding the sans-IO client core in tests (built from the spec)."""

from __future__ import annotations

import struct

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client_events import NEED_DATA, ClientEvent, ExportEntered
from openevs.agent.nbd.client_protocol import ClientConnection
from openevs.agent.nbd.constants import Info, Option, Reply

SIZE = 1 << 20
EXPORT_FLAGS = c.FLAG_HAS_FLAGS | c.FLAG_SEND_FLUSH | c.FLAG_SEND_FUA
CONTEXT_ID = 7


def greeting(flags: int = c.FLAG_FIXED_NEWSTYLE | c.FLAG_NO_ZEROES) -> bytes:
    return struct.pack(">QQH", c.NBDMAGIC, c.IHAVEOPT, flags)


def option_reply(opt: int, reply: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", c.OPTION_REPLY_MAGIC, opt, reply, len(data)) + data


def info_export(size: int = SIZE, flags: int = EXPORT_FLAGS) -> bytes:
    return option_reply(Option.GO, Reply.INFO, struct.pack(">HQH", Info.EXPORT, size, flags))


def info_block_size(minimum: int = 512, preferred: int = 4096, maximum: int = 1 << 22) -> bytes:
    return option_reply(
        Option.GO, Reply.INFO, struct.pack(">HIII", Info.BLOCK_SIZE, minimum, preferred, maximum)
    )


def meta_context(ctx_id: int = CONTEXT_ID, name: str = c.BASE_ALLOCATION) -> bytes:
    return option_reply(
        Option.SET_META_CONTEXT, Reply.META_CONTEXT, struct.pack(">I", ctx_id) + name.encode()
    )


def go_ok(size: int = SIZE, flags: int = EXPORT_FLAGS) -> bytes:
    return info_export(size, flags) + info_block_size() + option_reply(Option.GO, Reply.ACK)


def structured_handshake(size: int = SIZE, flags: int = EXPORT_FLAGS) -> bytes:
    """Everything a server says in a successful structured handshake."""
    return (
        greeting()
        + option_reply(Option.STRUCTURED_REPLY, Reply.ACK)
        + meta_context()
        + option_reply(Option.SET_META_CONTEXT, Reply.ACK)
        + go_ok(size, flags)
    )


def simple(cookie: int, error: int = 0, data: bytes = b"") -> bytes:
    return struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, error, cookie) + data


def chunk(cookie: int, ctype: int, payload: bytes = b"", *, done: bool = True) -> bytes:
    flags = c.REPLY_FLAG_DONE if done else 0
    return struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, flags, ctype, cookie, len(payload)) + payload


def data_chunk(cookie: int, offset: int, data: bytes, *, done: bool = True) -> bytes:
    return chunk(cookie, c.CHUNK_OFFSET_DATA, struct.pack(">Q", offset) + data, done=done)


def hole_chunk(cookie: int, offset: int, length: int, *, done: bool = True) -> bytes:
    return chunk(cookie, c.CHUNK_OFFSET_HOLE, struct.pack(">QI", offset, length), done=done)


def error_chunk(cookie: int, error: int, message: str = "", *, done: bool = True) -> bytes:
    text = message.encode()
    return chunk(cookie, c.CHUNK_ERROR, struct.pack(">IH", error, len(text)) + text, done=done)


def status_chunk(cookie: int, extents: list[tuple[int, int]], *, done: bool = True) -> bytes:
    body = struct.pack(">I", CONTEXT_ID) + b"".join(struct.pack(">II", n, f) for n, f in extents)
    return chunk(cookie, c.CHUNK_BLOCK_STATUS, body, done=done)


def events(conn: ClientConnection) -> list[ClientEvent]:
    out: list[ClientEvent] = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)  # type: ignore[arg-type]
    return out


def requests(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(flags, type, cookie, offset, length) of every request header in `data` (no payloads)."""
    out = []
    for pos in range(0, len(data), 28):
        magic, *fields = struct.unpack_from(">IHHQQI", data, pos)
        assert magic == c.REQUEST_MAGIC
        out.append(tuple(fields))
    return out  # type: ignore[return-value]


def transmitting(*, structured: bool = True) -> ClientConnection:
    """A client core driven through a successful handshake into transmission."""
    conn = ClientConnection("disk", structured=structured)
    script = structured_handshake() if structured else greeting() + go_ok()
    conn.receive_data(script)
    (entered,) = events(conn)
    assert isinstance(entered, ExportEntered)
    conn.data_to_send()
    return conn
