"""Handshake phase of the sans-IO NBD client core, fed with server bytes built from the spec."""

from __future__ import annotations

import itertools
import struct

import pytest

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client_events import NEED_DATA, ExportEntered, OptionRefused
from openevs.agent.nbd.client_handshake import TRANSITIONS, Trigger
from openevs.agent.nbd.client_protocol import ClientConnection, ClientState
from openevs.agent.nbd.constants import Command, Info, Option, Reply
from openevs.agent.nbd.errors import LocalProtocolError, RemoteProtocolError

from .nbd_wire import go, meta, option
from .server_wire import (
    CONTEXT_ID,
    EXPORT_FLAGS,
    SIZE,
    events,
    go_ok,
    greeting,
    info_block_size,
    info_export,
    meta_context,
    option_reply,
    structured_handshake,
)

CLIENT_FLAGS_NO_ZEROES = struct.pack(">I", c.FLAG_C_FIXED_NEWSTYLE | c.FLAG_C_NO_ZEROES)


def test_structured_handshake_step_by_step() -> None:
    conn = ClientConnection("disk")
    assert conn.state is ClientState.GREETING and conn.waiting_for == "the greeting"
    assert conn.data_to_send() == b""  # the server speaks first
    conn.receive_data(greeting())
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == CLIENT_FLAGS_NO_ZEROES + option(Option.STRUCTURED_REPLY)
    assert conn.state is ClientState.STRUCTURED_REPLY and conn.waiting_for == "STRUCTURED_REPLY"

    conn.receive_data(option_reply(Option.STRUCTURED_REPLY, Reply.ACK))
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == meta(Option.SET_META_CONTEXT, "disk", [c.BASE_ALLOCATION])
    assert conn.state is ClientState.META_CONTEXT

    conn.receive_data(meta_context() + option_reply(Option.SET_META_CONTEXT, Reply.ACK))
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == go("disk", (Info.BLOCK_SIZE,))
    assert conn.state is ClientState.GO and conn.waiting_for == "GO"

    conn.receive_data(go_ok())
    assert events(conn) == [ExportEntered(SIZE, EXPORT_FLAGS, True, CONTEXT_ID, (512, 4096, 1 << 22))]
    assert conn.state is ClientState.TRANSMISSION
    assert (conn.size_bytes, conn.flags, conn.structured) == (SIZE, EXPORT_FLAGS, True)
    assert conn.data_to_send() == b""


def test_without_structured_replies_go_comes_first() -> None:
    conn = ClientConnection("disk", structured=False)
    conn.receive_data(greeting())
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == CLIENT_FLAGS_NO_ZEROES + go("disk", (Info.BLOCK_SIZE,))
    conn.receive_data(go_ok())
    (entered,) = events(conn)
    assert isinstance(entered, ExportEntered) and not entered.structured
    assert entered.meta_context_id is None


def test_no_zeroes_is_only_asked_of_a_server_that_offers_it() -> None:
    conn = ClientConnection("disk")
    conn.receive_data(greeting(c.FLAG_FIXED_NEWSTYLE))
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send()[:4] == struct.pack(">I", c.FLAG_C_FIXED_NEWSTYLE)


def test_refused_structured_replies_mean_simple_replies() -> None:
    conn = ClientConnection("disk")
    conn.receive_data(greeting() + option_reply(Option.STRUCTURED_REPLY, Reply.ERR_UNSUP, b"no"))
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(go("disk", (Info.BLOCK_SIZE,)))
    conn.receive_data(go_ok())
    (entered,) = events(conn)
    assert isinstance(entered, ExportEntered) and not entered.structured


def test_refused_meta_context_ends_the_session() -> None:
    conn = ClientConnection("disk")
    conn.receive_data(
        greeting()
        + option_reply(Option.STRUCTURED_REPLY, Reply.ACK)
        + option_reply(Option.SET_META_CONTEXT, Reply.ERR_INVALID, b"nope")
    )
    assert events(conn) == [OptionRefused(Option.SET_META_CONTEXT, Reply.ERR_INVALID, "nope")]
    assert conn.state is ClientState.CLOSED
    conn.receive_data(b"anything at all")  # ignored from now on
    assert conn.next_event() is NEED_DATA


def test_unknown_export_is_refused() -> None:
    conn = ClientConnection("nope", structured=False)
    conn.receive_data(greeting() + option_reply(Option.GO, Reply.ERR_UNKNOWN, b"unknown export"))
    assert events(conn) == [OptionRefused(Option.GO, Reply.ERR_UNKNOWN, "unknown export")]
    assert conn.state is ClientState.CLOSED


def test_replies_it_does_not_need_are_skipped() -> None:
    conn = ClientConnection("disk")
    odd = (
        option_reply(Option.GO, Reply.INFO, struct.pack(">H", Info.NAME) + b"disk")
        + option_reply(Option.GO, Reply.INFO, b"\x00")  # too short for an info type
        + option_reply(Option.GO, Reply.INFO, struct.pack(">HQ", Info.EXPORT, 5))  # wrong length
        + option_reply(Option.GO, Reply.SERVER, b"whatever")
    )
    conn.receive_data(
        greeting()
        + option_reply(Option.STRUCTURED_REPLY, Reply.ACK)
        + meta_context(3, "base:other")
        + option_reply(Option.SET_META_CONTEXT, Reply.ACK)
        + odd
        + info_export()
        + option_reply(Option.GO, Reply.ACK)
    )
    (entered,) = events(conn)
    assert isinstance(entered, ExportEntered)
    assert entered.meta_context_id is None  # not base:allocation
    assert entered.size_bytes == SIZE
    assert entered.block_size == (c.MIN_BLOCK_SIZE, c.PREFERRED_BLOCK_SIZE, c.MAX_PAYLOAD)  # defaults


def test_split_at_every_byte_gives_the_same_events() -> None:
    script = structured_handshake()
    reference = ClientConnection("disk")
    reference.receive_data(script)
    expected = events(reference)
    for cut in range(1, len(script)):
        conn = ClientConnection("disk")
        conn.receive_data(script[:cut])
        got = events(conn)
        conn.receive_data(script[cut:])
        assert got + events(conn) == expected


def test_zero_copy_receive_gives_the_same_events() -> None:
    script = structured_handshake()
    conn = ClientConnection("disk")
    got = []
    pos = 0
    while pos < len(script):
        buf = conn.get_buffer()
        n = min(len(buf), 5, len(script) - pos)
        buf[:n] = script[pos : pos + n]
        conn.buffer_updated(n)
        pos += n
        got += events(conn)
    assert len(got) == 1 and isinstance(got[0], ExportEntered)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (b"X" * 18, "not a fixed newstyle"),
        (struct.pack(">QQH", c.NBDMAGIC, 0x1234, 3), "not a fixed newstyle"),
        (greeting(0), "fixed newstyle"),
        (greeting() + option_reply(Option.GO, Reply.ACK), "bad reply to option STRUCTURED_REPLY"),
        (greeting() + b"\x00" * 20, "bad reply to option"),
        (
            greeting() + struct.pack(">QIII", c.OPTION_REPLY_MAGIC, Option.STRUCTURED_REPLY, 3, 1 << 20),
            "too large",
        ),
    ],
)
def test_broken_handshakes_are_protocol_errors_for_good(script: bytes, message: str) -> None:
    conn = ClientConnection("disk")
    conn.receive_data(script)
    with pytest.raises(RemoteProtocolError, match=message):
        events(conn)
    assert conn.state is ClientState.ERROR
    for call in (conn.next_event, conn.data_to_send, conn.get_buffer, conn.disconnect):
        with pytest.raises(RemoteProtocolError):
            call()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"x")
    with pytest.raises(RemoteProtocolError):
        conn.request(Command.READ, 0, 512)


def test_an_option_reply_is_bounded_by_max_option_bytes() -> None:
    conn = ClientConnection("disk", max_option_bytes=1024)
    conn.receive_data(greeting() + option_reply(Option.STRUCTURED_REPLY, Reply.INFO, bytes(1025)))
    with pytest.raises(RemoteProtocolError, match="too large"):
        events(conn)


def test_requests_need_the_transmission_phase() -> None:
    conn = ClientConnection("disk")
    with pytest.raises(LocalProtocolError):
        conn.request(Command.READ, 0, 512)
    with pytest.raises(LocalProtocolError):
        conn.disconnect()


def test_block_size_and_export_infos_in_any_order() -> None:
    conn = ClientConnection("disk", structured=False)
    conn.receive_data(greeting() + info_block_size(1, 65536, 1 << 25) + info_export(4096, 3))
    conn.receive_data(option_reply(Option.GO, Reply.ACK))
    assert events(conn) == [ExportEntered(4096, 3, False, None, (1, 65536, 1 << 25))]


STATES = list(ClientState)
TRIGGERS = list(Trigger)


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(STATES, TRIGGERS)))
def test_every_state_and_trigger_pair(state: ClientState, trigger: Trigger) -> None:
    conn = ClientConnection("disk")
    conn._state = state
    if (state, trigger) in TRANSITIONS:
        conn._transition(trigger)
        assert conn.state is TRANSITIONS[(state, trigger)]
    else:
        with pytest.raises(LocalProtocolError, match=f"cannot {trigger.value} in state {state.value}"):
            conn._transition(trigger)
        assert conn.state is state


def test_error_and_closed_are_terminal() -> None:
    for (state, _trigger), _target in TRANSITIONS.items():
        assert state not in (ClientState.ERROR, ClientState.CLOSED)
