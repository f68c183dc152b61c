"""Fuzzing the sans-IO NBD server core: nothing but protocol errors may escape."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.constants import Command, Option
from openevs.agent.nbd.errors import ProtocolError
from openevs.agent.nbd.events import NEED_DATA, ExportLookup
from openevs.agent.nbd.protocol import ServerConnection

from .nbd_wire import CLIENT_FLAGS, go, meta, option, request

VALID = (
    CLIENT_FLAGS
    + option(Option.STRUCTURED_REPLY)
    + meta(Option.SET_META_CONTEXT, "disk", [c.BASE_ALLOCATION])
    + meta(Option.LIST_META_CONTEXT, "disk", [])
    + option(Option.LIST)
    + go("disk", opt=Option.INFO)
    + go("disk")
    + request(Command.WRITE, 1, 0, 8, c.CMD_FLAG_FUA, b"12345678")
    + request(Command.READ, 2, 0, 512)
    + request(Command.BLOCK_STATUS, 3, 0, 4096)
    + request(Command.WRITE_ZEROES, 4, 0, 4096, c.CMD_FLAG_NO_HOLE)
    + request(Command.DISC, 5)
)


def drive(data: bytes, chunk: int, found: bool) -> None:
    conn = ServerConnection(max_option_bytes=1024, max_payload=1 << 16)
    conn.data_to_send()
    try:
        for start in range(0, len(data), chunk):
            conn.receive_data(data[start : start + chunk])
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, ExportLookup):
                    if found:
                        conn.export_found(size_bytes=1 << 16, read_only=False)
                    else:
                        conn.export_not_found()
            conn.data_to_send()
    except ProtocolError:
        return


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.integers(1, 64), st.booleans())
def test_random_bytes(data: bytes, chunk: int, found: bool) -> None:
    drive(data, chunk, found)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
    st.integers(1, 97),
    st.booleans(),
)
def test_mutated_valid_sessions(flips: list[tuple[int, int]], chunk: int, found: bool) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    drive(bytes(data), chunk, found)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(VALID)), st.binary(max_size=64), st.integers(1, 97))
def test_truncated_and_spliced_sessions(cut: int, tail: bytes, chunk: int) -> None:
    drive(VALID[:cut] + tail, chunk, True)
