"""Handshake phase of the sans-IO NBD server core, fed with bytes built from the spec."""

from __future__ import annotations

import struct

import pytest

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.constants import Info, Option, Reply
from openevs.agent.nbd.errors import LocalProtocolError, RemoteProtocolError
from openevs.agent.nbd.events import NEED_DATA, Disconnect, ExportChosen, ExportLookup
from openevs.agent.nbd.protocol import ServerConnection, State

from .nbd_wire import (
    CLIENT_FLAGS,
    events,
    go,
    meta,
    option,
    option_replies,
    string,
)


def negotiating(flags: bytes = CLIENT_FLAGS) -> ServerConnection:
    conn = ServerConnection()
    conn.data_to_send()
    conn.receive_data(flags)
    assert conn.next_event() is NEED_DATA
    return conn


def test_greeting_is_fixed_newstyle_with_no_zeroes() -> None:
    conn = ServerConnection()
    assert conn.data_to_send() == struct.pack(
        ">QQH", c.NBDMAGIC, c.IHAVEOPT, c.FLAG_FIXED_NEWSTYLE | c.FLAG_NO_ZEROES
    )
    assert conn.state is State.CLIENT_FLAGS


@pytest.mark.parametrize("flags", [0, 1, 2, 3])
def test_known_client_flags_are_accepted(flags: int) -> None:
    conn = negotiating(struct.pack(">I", flags))
    assert conn.state is State.OPTIONS


def test_unknown_client_flags_close_and_stay_in_error() -> None:
    conn = ServerConnection()
    conn.receive_data(struct.pack(">I", 4))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state is State.ERROR
    for call in (conn.next_event, conn.data_to_send, conn.get_buffer):
        with pytest.raises(RemoteProtocolError):
            call()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"x")


def test_full_go_handshake_as_libnbd_does_it() -> None:
    conn = negotiating()
    conn.receive_data(option(Option.STRUCTURED_REPLY))
    conn.receive_data(meta(Option.SET_META_CONTEXT, "disk", [c.BASE_ALLOCATION]))
    conn.receive_data(go("disk", (Info.BLOCK_SIZE,)))
    assert events(conn) == [ExportLookup("disk", Option.GO)]
    assert conn.state is State.LOOKUP
    conn.export_found(size_bytes=1 << 30, read_only=False)
    chosen = events(conn)
    assert len(chosen) == 1 and isinstance(chosen[0], ExportChosen)
    assert chosen[0].block_status and chosen[0].structured_replies
    assert conn.state is State.TRANSMISSION
    replies = option_replies(conn.data_to_send())
    assert replies[0] == (Option.STRUCTURED_REPLY, Reply.ACK, b"")
    assert replies[1] == (
        Option.SET_META_CONTEXT,
        Reply.META_CONTEXT,
        struct.pack(">I", 1) + b"base:allocation",
    )
    assert replies[2] == (Option.SET_META_CONTEXT, Reply.ACK, b"")
    export_info = replies[3][2]
    size, flags = struct.unpack(">QH", export_info[2:])
    assert struct.unpack(">H", export_info[:2])[0] == Info.EXPORT and size == 1 << 30
    expected = (
        c.FLAG_HAS_FLAGS
        | c.FLAG_SEND_FLUSH
        | c.FLAG_SEND_FUA
        | c.FLAG_SEND_TRIM
        | c.FLAG_SEND_WRITE_ZEROES
        | c.FLAG_SEND_DF
        | c.FLAG_CAN_MULTI_CONN
        | c.FLAG_SEND_FAST_ZERO
        | c.FLAG_SEND_CACHE
    )
    assert flags == expected
    assert replies[4] == (Option.GO, Reply.INFO, struct.pack(">HIII", Info.BLOCK_SIZE, 1, 4096, 32 << 20))
    assert replies[5] == (Option.GO, Reply.ACK, b"")
    assert len(replies) == 6


def test_info_then_go_with_name_and_description() -> None:
    conn = negotiating()
    conn.receive_data(go("disk", (Info.NAME, Info.DESCRIPTION), opt=Option.INFO))
    assert events(conn) == [ExportLookup("disk", Option.INFO)]
    conn.export_found(size_bytes=4096, read_only=True, description="a volume")
    assert events(conn) == []
    assert conn.state is State.OPTIONS
    replies = option_replies(conn.data_to_send())
    assert [r[1] for r in replies] == [Reply.INFO, Reply.INFO, Reply.INFO, Reply.ACK]
    assert replies[1][2] == struct.pack(">H", Info.NAME) + b"disk"
    assert replies[2][2] == struct.pack(">H", Info.DESCRIPTION) + b"a volume"
    flags = struct.unpack(">H", replies[0][2][10:])[0]
    assert flags & c.FLAG_READ_ONLY and not flags & c.FLAG_SEND_TRIM
    assert not flags & c.FLAG_SEND_DF  # no structured replies negotiated
    conn.receive_data(go("disk"))
    assert events(conn) == [ExportLookup("disk", Option.GO)]
    conn.export_found(size_bytes=4096, read_only=True)
    chosen = events(conn)[0]
    assert isinstance(chosen, ExportChosen) and not chosen.block_status


def test_unknown_export_is_refused_and_negotiation_goes_on() -> None:
    conn = negotiating()
    conn.receive_data(go("nope"))
    events(conn)
    conn.export_not_found()
    assert option_replies(conn.data_to_send()) == [(Option.GO, Reply.ERR_UNKNOWN, b"unknown export")]
    assert conn.state is State.OPTIONS
    conn.receive_data(go("disk"))
    assert events(conn) == [ExportLookup("disk", Option.GO)]


def test_list_lists_nothing() -> None:
    conn = negotiating()
    conn.receive_data(option(Option.LIST))
    conn.receive_data(option(Option.LIST, b"junk"))
    assert events(conn) == []
    assert [r[1] for r in option_replies(conn.data_to_send())] == [Reply.ACK, Reply.ERR_INVALID]


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_enters_transmission(no_zeroes: bool) -> None:
    conn = negotiating(struct.pack(">I", 1 | (2 if no_zeroes else 0)))
    conn.receive_data(option(Option.EXPORT_NAME, b"disk"))
    assert events(conn) == [ExportLookup("disk", Option.EXPORT_NAME)]
    conn.export_found(size_bytes=8192, read_only=False)
    assert isinstance(events(conn)[0], ExportChosen)
    out = conn.data_to_send()
    assert struct.unpack_from(">Q", out)[0] == 8192
    assert len(out) == 10 + (0 if no_zeroes else 124)


def test_export_name_unknown_ends_the_session() -> None:
    conn = negotiating()
    conn.receive_data(option(Option.EXPORT_NAME, b"nope"))
    events(conn)
    conn.export_not_found()
    assert events(conn) == [Disconnect("unknown export")]
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == b""


def test_abort_acks_and_disconnects() -> None:
    conn = negotiating()
    conn.receive_data(option(Option.ABORT))
    assert events(conn) == [Disconnect("abort")]
    assert option_replies(conn.data_to_send()) == [(Option.ABORT, Reply.ACK, b"")]
    conn.receive_data(b"ignored after abort")


@pytest.mark.parametrize(
    "opt", [Option.STARTTLS, Option.EXTENDED_HEADERS, Option.PEEK_EXPORT, 12, 0x7FFF, 0xFFFFFFFF]
)
def test_unsupported_options_get_err_unsup(opt: int) -> None:
    conn = negotiating()
    conn.receive_data(option(opt, b"abc") + option(Option.STRUCTURED_REPLY))
    assert events(conn) == []
    replies = option_replies(conn.data_to_send())
    assert replies[0][:2] == (opt, Reply.ERR_UNSUP)
    assert replies[1] == (Option.STRUCTURED_REPLY, Reply.ACK, b"")


def test_structured_reply_with_data_is_invalid() -> None:
    conn = negotiating()
    conn.receive_data(option(Option.STRUCTURED_REPLY, b"x"))
    events(conn)
    assert option_replies(conn.data_to_send())[0][1] == Reply.ERR_INVALID
    assert not conn.structured


def test_meta_context_needs_structured_replies() -> None:
    conn = negotiating()
    conn.receive_data(meta(Option.SET_META_CONTEXT, "disk", [c.BASE_ALLOCATION]))
    events(conn)
    assert option_replies(conn.data_to_send())[0][1] == Reply.ERR_INVALID


@pytest.mark.parametrize(
    ("queries", "listed"),
    [
        ([], True),
        (["base:"], True),
        ([c.BASE_ALLOCATION], True),
        (["x-other:thing"], False),
        (["qemu:dirty-bitmap:a", c.BASE_ALLOCATION], True),
    ],
)
def test_list_meta_context(queries: list[str], listed: bool) -> None:
    conn = negotiating()
    conn.receive_data(option(Option.STRUCTURED_REPLY))
    conn.receive_data(meta(Option.LIST_META_CONTEXT, "disk", queries))
    events(conn)
    replies = option_replies(conn.data_to_send())[1:]
    if listed:
        assert replies[0] == (
            Option.LIST_META_CONTEXT,
            Reply.META_CONTEXT,
            struct.pack(">I", 0) + b"base:allocation",
        )
    assert replies[-1][1] == Reply.ACK and len(replies) == (2 if listed else 1)


def test_set_meta_context_for_another_export_disables_block_status() -> None:
    conn = negotiating()
    conn.receive_data(option(Option.STRUCTURED_REPLY))
    conn.receive_data(meta(Option.SET_META_CONTEXT, "other", [c.BASE_ALLOCATION]))
    conn.receive_data(go("disk"))
    events(conn)
    conn.export_found(size_bytes=1, read_only=False)
    chosen = events(conn)[0]
    assert isinstance(chosen, ExportChosen) and not chosen.block_status


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x00",
        string("disk"),
        string("disk") + b"\x00\x00\x00\x05",
        string("disk") + b"\x00\x00\x00\x01" + b"\x00\x00\x00\xff",
        b"\xff\xff\xff\xff" + b"\x00" * 4,
        string(b"\xff\xfe") + b"\x00\x00\x00\x00",
    ],
)
def test_malformed_meta_context_is_invalid(body: bytes) -> None:
    conn = negotiating()
    conn.receive_data(option(Option.STRUCTURED_REPLY) + option(Option.SET_META_CONTEXT, body))
    events(conn)
    assert option_replies(conn.data_to_send())[1][1] == Reply.ERR_INVALID
    assert conn.state is State.OPTIONS


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x00\x00\x00\x00",
        string("disk"),
        string("disk") + b"\x00\x02\x00\x03",
        string("disk") + b"\x00\x00" + b"junk",
        b"\x00\x00\x10\x01" + b"a" * 4097 + b"\x00\x00",
        string(b"\xff") + b"\x00\x00",
    ],
)
def test_malformed_go_is_invalid(body: bytes) -> None:
    conn = negotiating()
    conn.receive_data(option(Option.GO, body))
    assert events(conn) == []
    assert option_replies(conn.data_to_send())[0][1] == Reply.ERR_INVALID


def test_oversized_option_is_a_protocol_violation() -> None:
    conn = negotiating()
    conn.receive_data(struct.pack(">QII", c.IHAVEOPT, Option.GO, conn.max_option_bytes + 1))
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_bad_option_magic_is_a_protocol_violation() -> None:
    conn = negotiating()
    conn.receive_data(struct.pack(">QII", 0x1234, Option.GO, 0))
    with pytest.raises(RemoteProtocolError, match="magic"):
        conn.next_event()
    assert conn.state is State.ERROR


def test_too_many_options_is_a_protocol_violation() -> None:
    conn = negotiating()
    conn.receive_data(option(Option.LIST) * (conn.max_options + 1))
    with pytest.raises(RemoteProtocolError, match="too many"):
        events(conn)


def test_transmission_request_during_handshake_is_rejected() -> None:
    conn = negotiating()
    conn.receive_data(struct.pack(">IHHQQI", c.REQUEST_MAGIC, 0, 0, 1, 0, 512))
    with pytest.raises(RemoteProtocolError):
        events(conn)


def test_answers_without_a_pending_lookup_are_local_errors() -> None:
    conn = negotiating()
    with pytest.raises(LocalProtocolError):
        conn.export_found(size_bytes=1, read_only=False)
    with pytest.raises(LocalProtocolError):
        conn.export_not_found()


def test_no_options_are_parsed_while_a_lookup_is_pending() -> None:
    conn = negotiating()
    conn.receive_data(go("disk") + option(Option.LIST))
    assert events(conn) == [ExportLookup("disk", Option.GO)]
    assert conn.next_event() is NEED_DATA
    conn.export_not_found()
    assert events(conn) == []
    replies = option_replies(conn.data_to_send())
    assert [r[1] for r in replies] == [Reply.ERR_UNKNOWN, Reply.ACK]
