"""Transmission phase of the sans-IO NBD server core: every command, errors, limits."""

from __future__ import annotations

import struct

import pytest

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.constants import Command, Errno
from openevs.agent.nbd.errors import RemoteProtocolError
from openevs.agent.nbd.events import NEED_DATA, Disconnect, Request
from openevs.agent.nbd.protocol import ServerConnection, State
from openevs.agent.nbd.replies import merge_extents

from .nbd_wire import chunks, connected, events, request, simple_replies

SIZE = 1 << 20


@pytest.mark.parametrize(
    ("kind", "flags"),
    [
        (Command.READ, 0),
        (Command.READ, c.CMD_FLAG_FUA | c.CMD_FLAG_DF),
        (Command.FLUSH, 0),
        (Command.TRIM, c.CMD_FLAG_FUA),
        (Command.CACHE, 0),
        (Command.WRITE_ZEROES, c.CMD_FLAG_NO_HOLE | c.CMD_FLAG_FAST_ZERO | c.CMD_FLAG_FUA),
        (Command.BLOCK_STATUS, c.CMD_FLAG_REQ_ONE),
    ],
)
def test_commands_without_payload_become_requests(kind: Command, flags: int) -> None:
    conn = connected()
    length = 0 if kind is Command.FLUSH else 4096
    conn.receive_data(request(kind, 7, 0 if kind is Command.FLUSH else 8192, length, flags))
    assert events(conn) == [Request(kind, 7, 0 if kind is Command.FLUSH else 8192, length, flags)]
    assert conn.data_to_send() == b""


def test_write_payload_in_one_piece() -> None:
    conn = connected()
    conn.receive_data(request(Command.WRITE, 3, 512, 4, c.CMD_FLAG_FUA, b"abcd"))
    (req,) = events(conn)
    assert isinstance(req, Request) and req.payload == b"abcd" and req.fua


def test_large_write_payload_is_received_into_its_own_buffer() -> None:
    conn = connected()
    payload = bytes(range(256)) * 1024
    conn.receive_data(request(Command.WRITE, 9, 0, len(payload), 0, payload[:1000]))
    assert conn.next_event() is NEED_DATA
    pos = 1000
    while pos < len(payload):
        buf = conn.get_buffer()
        n = min(len(buf), 70000, len(payload) - pos)
        buf[:n] = payload[pos : pos + n]
        conn.buffer_updated(n)
        pos += n
    conn.receive_data(request(Command.FLUSH, 10))
    first, second = events(conn)
    assert isinstance(first, Request) and first.payload == payload
    assert isinstance(second, Request) and second.kind is Command.FLUSH


def test_split_at_every_byte_gives_the_same_events() -> None:
    stream = (
        request(Command.WRITE, 1, 0, 5, 0, b"hello")
        + request(Command.READ, 2, 0, 5)
        + request(Command.BLOCK_STATUS, 3, 0, 4096)
        + request(Command.DISC, 4)
    )
    reference = connected()
    reference.receive_data(stream)
    expected = events(reference)
    assert isinstance(expected[-1], Disconnect)
    for cut in range(1, len(stream)):
        conn = connected()
        conn.receive_data(stream[:cut])
        got = events(conn)
        conn.receive_data(stream[cut:])
        assert got + events(conn) == expected


def test_byte_by_byte() -> None:
    stream = request(Command.WRITE, 1, 0, 3, 0, b"xyz") + request(Command.TRIM, 2, 0, 512)
    conn = connected()
    got = []
    for i in range(len(stream)):
        conn.receive_data(stream[i : i + 1])
        got += events(conn)
    assert [r.kind for r in got if isinstance(r, Request)] == [Command.WRITE, Command.TRIM]


def test_disc_closes_and_ignores_what_follows() -> None:
    conn = connected()
    conn.receive_data(request(Command.DISC) + b"garbage after disc")
    assert events(conn) == [Disconnect("disc")]
    assert conn.state is State.CLOSED
    conn.receive_data(b"more")
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize(
    ("raw", "errno", "structured"),
    [
        (request(99, 5), Errno.EINVAL, True),
        (request(Command.READ, 5, 0, 512, 1 << 9), Errno.EINVAL, True),
        (request(Command.WRITE, 5, 0, 1, c.CMD_FLAG_NO_HOLE, b"x"), Errno.EINVAL, True),
        (request(Command.READ, 5, SIZE - 1, 2), Errno.EINVAL, True),
        (request(Command.READ, 5, 0, (32 << 20) + 1), Errno.EINVAL, True),
        (request(Command.WRITE, 5, SIZE, 1, 0, b"x"), Errno.ENOSPC, True),
        (request(Command.WRITE_ZEROES, 5, SIZE - 1, 2), Errno.ENOSPC, True),
        (request(Command.TRIM, 5, SIZE, 1), Errno.EINVAL, True),
        (request(Command.FLUSH, 5, 1, 0), Errno.EINVAL, True),
        (request(Command.BLOCK_STATUS, 5, 0, 0), Errno.EINVAL, True),
        (request(Command.BLOCK_STATUS, 5, SIZE, 512), Errno.EINVAL, True),
        (request(Command.READ, 5, 0, 512, c.CMD_FLAG_DF), Errno.EINVAL, False),
        (request(Command.BLOCK_STATUS, 5, 0, 512), Errno.EINVAL, False),
        (request(99, 5), Errno.EINVAL, False),
    ],
)
def test_invalid_requests_get_an_error_reply_and_no_event(raw: bytes, errno: int, structured: bool) -> None:
    conn = connected(structured=structured, size=SIZE)
    conn.receive_data(raw + request(Command.FLUSH, 6))
    (flush,) = events(conn)
    assert isinstance(flush, Request) and flush.cookie == 6
    out = conn.data_to_send()
    if structured:
        ((flags, ctype, cookie, payload),) = chunks(out)
        assert (flags, ctype, cookie) == (c.REPLY_FLAG_DONE, c.CHUNK_ERROR, 5)
        assert struct.unpack_from(">I", payload)[0] == errno
    else:
        assert simple_replies(out) == [(errno, 5)]


@pytest.mark.parametrize("kind", [Command.WRITE, Command.TRIM, Command.WRITE_ZEROES])
def test_read_only_export_refuses_writes_with_eperm(kind: Command) -> None:
    conn = connected(read_only=True, structured=False)
    payload = b"data" if kind is Command.WRITE else b""
    conn.receive_data(request(kind, 1, 0, 4, 0, payload) + request(Command.READ, 2, 0, 4))
    (read,) = events(conn)
    assert isinstance(read, Request) and read.kind is Command.READ
    assert simple_replies(conn.data_to_send()) == [(Errno.EPERM, 1)]


def test_refused_large_write_payload_is_skipped() -> None:
    conn = connected(read_only=True, structured=False)
    conn.receive_data(request(Command.WRITE, 1, 0, 300_000, 0, b"\0" * 1000))
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\0" * 299_000 + request(Command.FLUSH, 2))
    assert [e.cookie for e in events(conn) if isinstance(e, Request)] == [2]
    assert simple_replies(conn.data_to_send()) == [(Errno.EPERM, 1)]


def test_zero_length_requests_are_answered_by_the_core() -> None:
    conn = connected()
    conn.receive_data(request(Command.READ, 1, 0, 0) + request(Command.WRITE, 2, 0, 0))
    assert events(conn) == []
    replies = conn.data_to_send()
    ((flags, ctype, cookie, _),) = chunks(replies[:20])
    assert (flags, ctype, cookie) == (c.REPLY_FLAG_DONE, c.CHUNK_NONE, 1)
    assert simple_replies(replies[20:]) == [(0, 2)]


def test_oversized_write_is_a_protocol_violation() -> None:
    conn = connected()
    conn.receive_data(request(Command.WRITE, 1, 0, (32 << 20) + 1))
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.reply_ok(1) and conn.next_event()


def test_bad_request_magic_is_a_protocol_violation() -> None:
    conn = connected()
    conn.receive_data(b"\x00" * 28)
    with pytest.raises(RemoteProtocolError, match="magic"):
        conn.next_event()
    assert conn.state is State.ERROR


def test_bulk_input_is_parsed_as_it_arrives() -> None:
    conn = connected()
    many = b"".join(request(Command.READ, i, 0, 512) for i in range(20_000))
    conn.receive_data(many)
    assert len(events(conn)) == 20_000


# -- reply builders ---------------------------------------------------------


def test_simple_read_reply() -> None:
    conn = connected(structured=False)
    assert b"".join(conn.reply_read(4, 0, b"abc")) == struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, 0, 4) + b"abc"


def test_structured_read_reply_is_one_offset_data_chunk() -> None:
    conn = connected()
    data = b"z" * 100_000
    ((flags, ctype, cookie, payload),) = chunks(b"".join(conn.reply_read(4, 4096, data)))
    assert (flags, ctype, cookie) == (c.REPLY_FLAG_DONE, c.CHUNK_OFFSET_DATA, 4)
    assert payload == struct.pack(">Q", 4096) + data


def test_read_pieces_with_holes() -> None:
    conn = connected()
    out = chunks(b"".join(conn.reply_read_pieces(8, 0, [b"ab", 510, b"cd"])))
    assert [(f, t) for f, t, _, _ in out] == [
        (0, c.CHUNK_OFFSET_DATA),
        (0, c.CHUNK_OFFSET_HOLE),
        (c.REPLY_FLAG_DONE, c.CHUNK_OFFSET_DATA),
    ]
    assert out[1][3] == struct.pack(">QI", 2, 510)
    assert out[2][3] == struct.pack(">Q", 512) + b"cd"
    simple = connected(structured=False)
    assert b"".join(simple.reply_read_pieces(8, 0, [b"ab", 3]))[16:] == b"ab\0\0\0"


def test_block_status_reply_layout() -> None:
    conn = connected()
    ((flags, ctype, cookie, payload),) = chunks(conn.reply_block_status(2, [(4096, 3), (512, 0)]))
    assert (flags, ctype, cookie) == (c.REPLY_FLAG_DONE, c.CHUNK_BLOCK_STATUS, 2)
    assert payload == struct.pack(">IIIII", 1, 4096, 3, 512, 0)


def test_error_reply_carries_the_message() -> None:
    conn = connected()
    ((_, ctype, _, payload),) = chunks(conn.reply_error(1, Errno.EIO, "disk on fire"))
    assert ctype == c.CHUNK_ERROR
    assert payload == struct.pack(">IH", 5, 12) + b"disk on fire"


@pytest.mark.parametrize(
    ("extents", "length", "req_one", "expected"),
    [
        ([(100, 0), (100, 0), (50, 3)], 1000, False, [(200, 0), (50, 3)]),
        ([(100, 0), (900, 3)], 300, False, [(100, 0), (200, 3)]),
        ([(100, 0), (900, 3)], 300, True, [(100, 0)]),
        ([], 512, False, [(512, 0)]),
        ([(4096, 3)], 512, True, [(512, 3)]),
    ],
)
def test_merge_extents(
    extents: list[tuple[int, int]], length: int, req_one: bool, expected: list[tuple[int, int]]
) -> None:
    assert merge_extents(extents, length, req_one=req_one) == expected


def test_state_machine_rejects_illegal_transitions() -> None:
    conn = ServerConnection()
    from openevs.agent.nbd.errors import LocalProtocolError
    from openevs.agent.nbd.protocol import Trigger

    with pytest.raises(LocalProtocolError):
        conn._transition(Trigger.EXPORT_ENTERED)
