"""Fuzzing the sans-IO NBD client core with server bytes: only RemoteProtocolError may
escape, a broken connection stays broken, and its buffers stay bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client_events import NEED_DATA, ExportEntered, OptionRefused
from openevs.agent.nbd.client_protocol import ClientConnection, ClientState
from openevs.agent.nbd.constants import Command, Errno, Option, Reply
from openevs.agent.nbd.errors import RemoteProtocolError

from .server_wire import (
    chunk,
    data_chunk,
    error_chunk,
    hole_chunk,
    option_reply,
    simple,
    status_chunk,
    structured_handshake,
)

MAX_OPTION_BYTES = 1024
MAX_CHUNK_BYTES = 4096
# The requests sent once the export is entered: cookies 1.. in this order.
REQUESTS = [
    (Command.READ, 0, 4096),
    (Command.WRITE, 0, 8),
    (Command.BLOCK_STATUS, 0, 1 << 16),
    (Command.READ, 8192, 64),
    (Command.FLUSH, 0, 0),
]
REQUESTED_BYTES = sum(length for kind, _o, length in REQUESTS if kind == Command.READ)

VALID = (
    structured_handshake(size=1 << 16)
    + data_chunk(1, 0, b"x" * 2048, done=False)
    + hole_chunk(1, 2048, 2048)
    + simple(2)
    + status_chunk(3, [(4096, 0), (4096, 3)], done=False)
    + status_chunk(3, [(8192, 1)])
    + error_chunk(4, Errno.EIO, "nope", done=False)
    + chunk(4, c.CHUNK_NONE)
    + simple(5, Errno.EINVAL)
)


def drive(data: bytes, step: int, structured: bool = True) -> None:
    conn = ClientConnection(
        "disk", structured=structured, max_option_bytes=MAX_OPTION_BYTES, max_chunk_bytes=MAX_CHUNK_BYTES
    )
    bound = conn.buffered_bytes + REQUESTED_BYTES  # the receive buffer never grows
    try:
        for start in range(0, len(data), step):
            conn.receive_data(data[start : start + step])
            conn.data_to_send()
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, ExportEntered):
                    for kind, offset, length in REQUESTS:
                        conn.request(kind, offset, length)
                elif isinstance(event, OptionRefused):
                    assert conn.state is ClientState.CLOSED
            assert conn.buffered_bytes <= bound
            assert conn.pending_count <= len(REQUESTS)
    except RemoteProtocolError:
        assert conn.state is ClientState.ERROR
        for call in (conn.next_event, conn.get_buffer, conn.data_to_send):
            with pytest.raises(RemoteProtocolError):
                call()
        with pytest.raises(RemoteProtocolError):
            conn.receive_data(b"\x00")


def test_the_valid_session_is_valid() -> None:
    conn = ClientConnection("disk", max_option_bytes=MAX_OPTION_BYTES, max_chunk_bytes=MAX_CHUNK_BYTES)
    conn.receive_data(VALID[: len(structured_handshake(size=1 << 16))])
    assert isinstance(conn.next_event(), ExportEntered)
    for kind, offset, length in REQUESTS:
        conn.request(kind, offset, length)
    conn.receive_data(VALID[len(structured_handshake(size=1 << 16)) :])
    done = []
    while (event := conn.next_event()) is not NEED_DATA:
        done.append(type(event).__name__)
    assert done == ["RequestDone", "RequestDone", "RequestDone", "RequestFailed", "RequestFailed"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.integers(1, 64), st.booleans())
def test_random_bytes(data: bytes, step: int, structured: bool) -> None:
    drive(data, step, structured)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1024), st.integers(1, 97))
def test_random_bytes_after_a_good_handshake(tail: bytes, step: int) -> None:
    drive(structured_handshake(size=1 << 16) + tail, step)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
    st.integers(1, 97),
)
def test_mutated_valid_sessions(flips: list[tuple[int, int]], step: int) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    drive(bytes(data), step)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(VALID)), st.binary(max_size=64), st.integers(1, 97))
def test_truncated_and_spliced_sessions(cut: int, tail: bytes, step: int) -> None:
    drive(VALID[:cut] + tail, step)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(max_size=64), st.integers(1, 97))
def test_odd_option_replies(reply: int, payload: bytes, step: int) -> None:
    head = structured_handshake(size=1 << 16)[:18]
    drive(
        head + option_reply(Option.STRUCTURED_REPLY, reply, payload) + option_reply(Option.GO, Reply.ACK),
        step,
    )
