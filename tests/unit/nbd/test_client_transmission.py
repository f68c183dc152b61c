"""Transmission phase of the sans-IO NBD client core: requests, replies, chunks, limits."""

from __future__ import annotations

import struct

import pytest

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client_events import NEED_DATA, RequestDone, RequestFailed
from openevs.agent.nbd.client_protocol import RECV_BUFFER_BYTES, ClientConnection, ClientState
from openevs.agent.nbd.constants import Command, Errno
from openevs.agent.nbd.errors import RemoteProtocolError

from .server_wire import (
    chunk,
    data_chunk,
    error_chunk,
    events,
    hole_chunk,
    requests,
    simple,
    status_chunk,
    structured_handshake,
    transmitting,
)


def test_requests_get_fresh_cookies_and_exact_headers() -> None:
    conn = transmitting()
    sent = b""
    cookies = []
    for kind, offset, length, flags in [
        (Command.READ, 4096, 512, 0),
        (Command.WRITE, 0, 8, c.CMD_FLAG_FUA),
        (Command.BLOCK_STATUS, 0, 1 << 20, c.CMD_FLAG_REQ_ONE),
        (42, 1, 2, 1 << 7),  # anything goes: the server judges
    ]:
        cookie, header = conn.request(kind, offset, length, flags)
        cookies.append(cookie)
        sent += header
    assert len(set(cookies)) == 4
    assert requests(sent) == [
        (0, Command.READ, cookies[0], 4096, 512),
        (c.CMD_FLAG_FUA, Command.WRITE, cookies[1], 0, 8),
        (c.CMD_FLAG_REQ_ONE, Command.BLOCK_STATUS, cookies[2], 0, 1 << 20),
        (1 << 7, 42, cookies[3], 1, 2),
    ]
    assert conn.pending_count == 4


def test_simple_replies_in_any_order() -> None:
    conn = transmitting(structured=False)
    read, _ = conn.request(Command.READ, 0, 5)
    write, _ = conn.request(Command.WRITE, 0, 3)
    flush, _ = conn.request(Command.FLUSH, 0, 0)
    conn.receive_data(simple(flush, Errno.EIO) + simple(write) + simple(read, data=b"hello"))
    assert events(conn) == [
        RequestFailed(flush, Errno.EIO, ""),
        RequestDone(write, None),
        RequestDone(read, b"hello"),
    ]
    assert conn.pending_count == 0


def test_a_failed_read_carries_no_data() -> None:
    conn = transmitting(structured=False)
    read, _ = conn.request(Command.READ, 0, 5)
    after, _ = conn.request(Command.FLUSH, 0, 0)
    conn.receive_data(simple(read, Errno.EINVAL) + simple(after))
    assert events(conn) == [RequestFailed(read, Errno.EINVAL, ""), RequestDone(after, None)]


@pytest.mark.parametrize("structured", [False, True])
def test_large_read_data_is_received_into_its_result(structured: bool) -> None:
    conn = transmitting(structured=structured)
    data = bytes(range(256)) * 4096  # 1 MiB
    cookie, _ = conn.request(Command.READ, 1 << 20, len(data))
    head = simple(cookie)
    if structured:  # a data chunk's header and offset
        head = struct.pack(">IHHQIQ", c.STRUCTURED_REPLY_MAGIC, 1, 1, cookie, len(data) + 8, 1 << 20)
    conn.receive_data(head + data[:1000])
    assert conn.next_event() is NEED_DATA
    pos = 1000
    while pos < len(data):
        buf = conn.get_buffer()
        assert len(buf) == len(data) - pos  # straight into the result, not the receive buffer
        n = min(len(buf), 70000)
        buf[:n] = data[pos : pos + n]
        del buf
        conn.buffer_updated(n)
        pos += n
        assert conn.awaiting_payload == (pos < len(data))
    assert events(conn) == [RequestDone(cookie, data)]
    assert conn.buffered_bytes == len(conn.get_buffer())  # back to the receive buffer alone


def test_structured_read_assembled_from_data_and_holes() -> None:
    conn = transmitting()
    cookie, _ = conn.request(Command.READ, 8192, 12)
    conn.receive_data(
        data_chunk(cookie, 8192 + 8, b"tail", done=False)
        + hole_chunk(cookie, 8192 + 4, 4, done=False)
        + data_chunk(cookie, 8192, b"head", done=False)
    )
    assert conn.next_event() is NEED_DATA
    conn.receive_data(chunk(cookie, c.CHUNK_NONE))
    assert events(conn) == [RequestDone(cookie, b"head" + bytes(4) + b"tail")]


def test_structured_read_of_holes_only_is_zeroes() -> None:
    conn = transmitting()
    cookie, _ = conn.request(Command.READ, 0, 4096)
    conn.receive_data(hole_chunk(cookie, 0, 4096))
    assert events(conn) == [RequestDone(cookie, bytes(4096))]


def test_a_data_chunk_outside_its_request_is_blamed_on_that_request() -> None:
    conn = transmitting()
    other, _ = conn.request(Command.FLUSH, 0, 0)
    cookie, _ = conn.request(Command.READ, 4096, 8)
    conn.receive_data(data_chunk(cookie, 4092, b"12345678"))
    with pytest.raises(RemoteProtocolError, match="outside the request"):
        events(conn)
    assert conn.error_cookie == cookie != other
    assert conn.state is ClientState.ERROR


def test_error_chunks_first_one_wins() -> None:
    conn = transmitting()
    cookie, _ = conn.request(Command.READ, 0, 4096)
    conn.receive_data(
        error_chunk(cookie, Errno.EIO, "disk on fire", done=False)
        + data_chunk(cookie, 0, bytes(4096), done=False)
        + error_chunk(cookie, Errno.EINVAL, "later")
    )
    assert events(conn) == [RequestFailed(cookie, Errno.EIO, "disk on fire")]


def test_block_status_extents_over_several_chunks() -> None:
    conn = transmitting()
    cookie, _ = conn.request(Command.BLOCK_STATUS, 0, 1 << 20)
    conn.receive_data(status_chunk(cookie, [(4096, 0), (8192, 3)], done=False))
    conn.receive_data(status_chunk(cookie, [(1 << 19, 1)]))
    assert events(conn) == [RequestDone(cookie, [(4096, 0), (8192, 3), (1 << 19, 1)])]


def test_structured_ok_for_other_commands_and_ignored_data() -> None:
    conn = transmitting()
    write, _ = conn.request(Command.WRITE, 0, 4)
    trim, _ = conn.request(Command.TRIM, 0, 4096)
    conn.receive_data(data_chunk(write, 0, b"junk", done=False) + chunk(write, c.CHUNK_NONE) + simple(trim))
    assert events(conn) == [RequestDone(write, None), RequestDone(trim, None)]


def test_split_at_every_byte_gives_the_same_events() -> None:
    def run(cut: int | None) -> list[object]:
        conn = transmitting()
        read, _ = conn.request(Command.READ, 0, 12)
        status, _ = conn.request(Command.BLOCK_STATUS, 0, 4096)
        write, _ = conn.request(Command.WRITE, 0, 4)
        stream = (
            data_chunk(read, 0, b"0123", done=False)
            + status_chunk(status, [(4096, 0)])
            + hole_chunk(read, 4, 4, done=False)
            + simple(write, Errno.ENOSPC)
            + data_chunk(read, 8, b"89ab")
        )
        if cut is None:
            conn.receive_data(stream)
            return list(events(conn))
        conn.receive_data(stream[:cut])
        got = list(events(conn))
        conn.receive_data(stream[cut:])
        return got + list(events(conn))

    expected = run(None)
    assert len(expected) == 3
    for cut in range(1, 140):
        assert run(cut) == expected


def test_bulk_input_keeps_the_receive_buffer_bounded() -> None:
    conn = transmitting()
    cookies = [conn.request(Command.WRITE, 0, 1)[0] for _ in range(20000)]
    conn.receive_data(b"".join(simple(k) for k in cookies))  # 320 kB of replies at once
    assert len(events(conn)) == 20000
    assert conn.buffered_bytes <= 2 * (RECV_BUFFER_BYTES + 1024)


def test_disconnect_ends_the_session() -> None:
    conn = transmitting()
    conn.request(Command.READ, 0, 512)
    header = conn.disconnect()
    assert requests(header) == [(0, Command.DISC, 0, 0, 0)]
    assert conn.state is ClientState.CLOSED and conn.pending_count == 0
    conn.receive_data(b"\xff" * 100)  # whatever follows is ignored
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (simple(99), "unknown cookie 99"),
        (chunk(99, c.CHUNK_NONE), "unknown cookie 99"),
        (b"\x12\x34\x56\x78" + bytes(12), "bad reply magic 0x12345678"),
        (chunk(1, 77), "unexpected reply chunk type 77"),
        (chunk(1, c.CHUNK_OFFSET_HOLE, bytes(8)), "chunk type 2"),
        (chunk(1, c.CHUNK_BLOCK_STATUS, bytes(10)), "chunk type 5"),
        (chunk(1, c.CHUNK_ERROR, bytes(4)), "chunk type 32769"),
        (chunk(1, c.CHUNK_OFFSET_DATA, bytes(8)), "without data"),
        (
            struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, 0, c.CHUNK_BLOCK_STATUS, 2, 1 << 24),
            "over the limit",
        ),
    ],
)
def test_broken_replies_are_protocol_errors_for_good(stream: bytes, message: str) -> None:
    conn = transmitting()
    conn.request(Command.READ, 0, 512)  # cookie 1
    conn.request(Command.BLOCK_STATUS, 0, 512)  # cookie 2
    conn.receive_data(stream)
    with pytest.raises(RemoteProtocolError, match=message):
        events(conn)
    assert conn.state is ClientState.ERROR and conn.error_cookie is None
    for call in (conn.next_event, conn.get_buffer, conn.disconnect):
        with pytest.raises(RemoteProtocolError):
            call()
    with pytest.raises(RemoteProtocolError):
        conn.request(Command.READ, 0, 512)


def test_extents_per_request_are_bounded() -> None:
    conn = ClientConnection("disk", max_chunk_bytes=4 + 8 * 4)
    conn.receive_data(structured_handshake())
    events(conn)
    cookie, _ = conn.request(Command.BLOCK_STATUS, 0, 1 << 20)
    conn.receive_data(status_chunk(cookie, [(1, 0)] * 4, done=False))
    assert conn.next_event() is NEED_DATA
    conn.receive_data(status_chunk(cookie, [(1, 0)]))
    with pytest.raises(RemoteProtocolError, match="too many extents"):
        events(conn)
