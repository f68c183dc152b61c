"""The witness protocol core (witness/protocol.py), byte by byte, and fuzzed."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openevs.witness import protocol as p


def frame(body: dict[str, object] | bytes) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return struct.pack(">I", len(data)) + data


def ready_pair() -> tuple[p.Connection, p.Connection]:
    client, server = p.Connection(p.Role.CLIENT), p.Connection(p.Role.SERVER)
    server.receive_data(client.send(p.Hello(side="az1")))
    assert isinstance(server.next_event(), p.Hello) and server.side == "az1"
    client.receive_data(server.send(p.Welcome(lease_s=6)))
    assert isinstance(client.next_event(), p.Welcome)
    assert client.state is server.state is p.State.READY
    return client, server


def test_a_request_and_its_reply_round_trip() -> None:
    client, server = ready_pair()
    acquire = p.Acquire(id=7, units=[p.Unit(key="group:g1", epoch=3)])
    server.receive_data(client.send(acquire))
    assert server.next_event() == acquire
    assert server.next_event() is p.NEED_DATA
    reply = p.Acquired(id=7, grants=[p.Grant(key="group:g1", granted=True, epoch=3, holder="az1", lease_s=6)])
    client.receive_data(server.send(reply))
    assert client.next_event() == reply


def test_bytes_may_arrive_one_at_a_time_and_frames_back_to_back() -> None:
    client, server = ready_pair()
    data = client.send(p.Ping(id=1)) + client.send(p.Ping(id=2))
    events = []
    for i in range(len(data)):
        server.receive_data(data[i : i + 1])
        while not isinstance(event := server.next_event(), p.NeedData):
            events.append(event)
    assert events == [p.Ping(id=1), p.Ping(id=2)]


def test_the_wire_format() -> None:
    client = p.Connection(p.Role.CLIENT)
    data = client.send(p.Hello(side="az2.dc2"))
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert json.loads(data[4:]) == {"op": "hello", "side": "az2.dc2", "version": 1}


@pytest.mark.parametrize(
    "first",
    [
        {"op": "ping", "id": 1},  # a request before Hello
        {"op": "hello", "side": "a", "version": 99},
        {"op": "hello", "side": ""},
        {"op": "welcome", "lease_s": 1},  # a server message to a server
        {"op": "hello", "side": "a", "extra": 1},
        b"not json",
        b"[]",
    ],
)
def test_a_bad_first_message_is_a_terminal_error(first: dict[str, object] | bytes) -> None:
    server = p.Connection(p.Role.SERVER)
    server.receive_data(frame(first))
    with pytest.raises(p.RemoteProtocolError):
        server.next_event()
    assert server.state is p.State.ERROR
    with pytest.raises(p.RemoteProtocolError):  # and stays so
        server.receive_data(b"x")
    with pytest.raises(p.RemoteProtocolError):
        server.next_event()


@pytest.mark.parametrize(
    "message",
    [
        {"op": "hello", "side": "b"},  # a second Hello
        {"op": "acquire", "id": 1, "units": [{"key": "volume:x", "epoch": 1}]},  # bad key
        {"op": "acquire", "id": 1, "units": [{"key": "pair:x", "epoch": -1}]},
        {"op": "acquire", "id": 1, "units": [{"key": "pair:a/../b", "epoch": 1}]},
        {"op": "status", "id": 1},
        {"op": "explode", "id": 1},
    ],
)
def test_a_bad_request_is_a_terminal_error(message: dict[str, object]) -> None:
    _, server = ready_pair()
    server.receive_data(frame(message))
    with pytest.raises(p.RemoteProtocolError):
        server.next_event()
    assert server.state is p.State.ERROR


def test_frames_have_a_limit() -> None:
    server = p.Connection(p.Role.SERVER, max_frame_bytes=100)
    with pytest.raises(p.RemoteProtocolError, match="exceeds"):
        server.receive_data(struct.pack(">I", 101) + b"x" * 200)
    server = p.Connection(p.Role.SERVER, max_frame_bytes=100)
    server.receive_data(struct.pack(">I", 1000))
    with pytest.raises(p.RemoteProtocolError, match="exceeds"):
        server.next_event()


def test_a_close_in_the_middle_of_a_frame_is_an_error_and_between_frames_is_not() -> None:
    _, server = ready_pair()
    server.receive_data(b"")
    assert server.state is p.State.CLOSED
    _, server = ready_pair()
    server.receive_data(frame({"op": "ping", "id": 1})[:3])
    with pytest.raises(p.RemoteProtocolError):
        server.receive_data(b"")


def test_misuse_is_a_local_error() -> None:
    client, server = p.Connection(p.Role.CLIENT), p.Connection(p.Role.SERVER)
    with pytest.raises(p.LocalProtocolError):
        client.send(p.Ping(id=1))  # before Hello
    with pytest.raises(p.LocalProtocolError):
        server.send(p.Hello(side="x"))  # a server does not say Hello
    with pytest.raises(p.LocalProtocolError):
        client.send(p.Pong(id=1))


def test_transitions_table_is_the_only_way_states_move() -> None:
    assert (p.State.READY, p.Trigger.HELLO) not in p.TRANSITIONS
    assert p.TRANSITIONS[(p.State.GREETING, p.Trigger.HELLO)] is p.State.WELCOMING
    assert all(new is not p.State.ERROR for new in p.TRANSITIONS.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.sampled_from(list(p.Role)))
def test_random_bytes_never_crash_the_core(chunks: list[bytes], role: p.Role) -> None:
    conn = p.Connection(role, max_frame_bytes=256)
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while not isinstance(conn.next_event(), p.NeedData):
                pass
    except p.RemoteProtocolError:
        assert conn.state is p.State.ERROR
    except p.LocalProtocolError:
        assert conn.state is p.State.CLOSED  # fed after the peer closed
    assert len(conn._buffer) <= 256 + 4 + 64


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=200))
def test_truncated_handshakes_wait_or_fail(garbage: bytes, cut: int) -> None:
    hello = p.Connection(p.Role.CLIENT).send(p.Hello(side="az1"))
    server = p.Connection(p.Role.SERVER)
    try:
        server.receive_data((hello + garbage)[: max(1, cut)])
        event = server.next_event()
        assert isinstance(event, p.NeedData | p.Hello)
    except p.RemoteProtocolError:
        assert server.state is p.State.ERROR
