"""NBD_OPT_STARTTLS in the sans-IO cores (server and client), fed with bytes built from the spec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client_events import NEED_DATA, OptionRefused, TlsAccepted
from openevs.agent.nbd.client_protocol import ClientConnection, ClientState
from openevs.agent.nbd.constants import Option, Reply
from openevs.agent.nbd.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from openevs.agent.nbd.events import Disconnect, ExportLookup, StartTls
from openevs.agent.nbd.protocol import ServerConnection, State, TlsPolicy

from .nbd_wire import CLIENT_FLAGS, events, go, meta, option, option_replies
from .server_wire import greeting, option_reply

# -- server ----------------------------------------------------------------------


def negotiating(policy: TlsPolicy) -> ServerConnection:
    conn = ServerConnection(tls_policy=policy)
    conn.data_to_send()
    conn.receive_data(CLIENT_FLAGS)
    assert events(conn) == []
    return conn


def started(policy: TlsPolicy) -> ServerConnection:
    conn = negotiating(policy)
    conn.receive_data(option(Option.STARTTLS))
    assert events(conn) == [StartTls()]
    assert option_replies(conn.data_to_send()) == [(Option.STARTTLS, Reply.ACK, b"")]
    assert conn.state is State.TLS_HANDSHAKE
    conn.tls_started()
    return conn


PRE_TLS_OPTIONS = [
    option(Option.LIST),
    option(Option.STRUCTURED_REPLY),
    go("disk", opt=Option.INFO),
    go("disk"),
    meta(Option.LIST_META_CONTEXT, "disk", []),
    meta(Option.SET_META_CONTEXT, "disk", [c.BASE_ALLOCATION]),
    option(Option.EXTENDED_HEADERS),
    option(99),
]


@pytest.mark.parametrize("request_bytes", PRE_TLS_OPTIONS)
def test_required_refuses_every_option_before_tls_with_tls_reqd(request_bytes: bytes) -> None:
    conn = negotiating(TlsPolicy.REQUIRED)
    conn.receive_data(request_bytes)
    assert events(conn) == []  # no lookup: no export is named to anyone before TLS
    [(_opt, reply, _msg)] = option_replies(conn.data_to_send())
    assert reply is Reply.ERR_TLS_REQD
    assert conn.state is State.OPTIONS


def test_required_ends_the_session_on_export_name_before_tls() -> None:
    conn = negotiating(TlsPolicy.REQUIRED)
    conn.receive_data(option(Option.EXPORT_NAME, b"disk"))
    [event] = events(conn)
    assert isinstance(event, Disconnect) and conn.state is State.CLOSED
    assert conn.data_to_send() == b""  # EXPORT_NAME cannot be answered with an error


def test_required_lets_abort_through() -> None:
    conn = negotiating(TlsPolicy.REQUIRED)
    conn.receive_data(option(Option.ABORT))
    assert events(conn) == [Disconnect("abort")]
    assert option_replies(conn.data_to_send()) == [(Option.ABORT, Reply.ACK, b"")]


@pytest.mark.parametrize("policy", [TlsPolicy.REQUIRED, TlsPolicy.OPTIONAL])
def test_after_tls_options_are_answered_and_a_second_starttls_is_invalid(policy: TlsPolicy) -> None:
    conn = started(policy)
    assert conn.tls_active
    conn.receive_data(option(Option.STARTTLS))
    assert events(conn) == []
    [(_opt, reply, _msg)] = option_replies(conn.data_to_send())
    assert reply is Reply.ERR_INVALID
    conn.receive_data(go("disk"))
    assert events(conn) == [ExportLookup("disk", Option.GO)]


def test_state_negotiated_before_tls_is_forgotten() -> None:
    conn = negotiating(TlsPolicy.OPTIONAL)
    conn.receive_data(option(Option.STRUCTURED_REPLY))
    assert events(conn) == [] and conn.structured
    conn.data_to_send()
    conn.receive_data(option(Option.STARTTLS))
    assert events(conn) == [StartTls()]
    conn.tls_started()
    assert not conn.structured


def test_optional_answers_clear_text_options() -> None:
    conn = negotiating(TlsPolicy.OPTIONAL)
    conn.receive_data(go("disk"))
    assert events(conn) == [ExportLookup("disk", Option.GO)]


def test_off_refuses_starttls_as_unsupported() -> None:
    conn = negotiating(TlsPolicy.OFF)
    conn.receive_data(option(Option.STARTTLS))
    assert events(conn) == []
    [(_opt, reply, _msg)] = option_replies(conn.data_to_send())
    assert reply is Reply.ERR_UNSUP


def test_starttls_with_data_is_invalid() -> None:
    conn = negotiating(TlsPolicy.REQUIRED)
    conn.receive_data(option(Option.STARTTLS, b"x"))
    assert events(conn) == []
    [(_opt, reply, _msg)] = option_replies(conn.data_to_send())
    assert reply is Reply.ERR_INVALID and conn.state is State.OPTIONS


def test_clear_text_bytes_behind_starttls_fail_the_connection() -> None:
    """An attacker's injected options must never be read as if they came over TLS."""
    conn = negotiating(TlsPolicy.REQUIRED)
    conn.receive_data(option(Option.STARTTLS) + go("disk"))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state is State.ERROR


def test_tls_started_without_starttls_is_misuse() -> None:
    conn = negotiating(TlsPolicy.REQUIRED)
    with pytest.raises(LocalProtocolError):
        conn.tls_started()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(list(TlsPolicy)))
def test_random_bytes_in_negotiation_never_escape_the_error_tree(data: bytes, policy: TlsPolicy) -> None:
    conn = negotiating(policy)
    try:
        conn.receive_data(data)
        for _ in range(64):
            event = conn.next_event()
            if isinstance(event, StartTls):
                conn.tls_started()
            elif isinstance(event, ExportLookup):
                conn.export_not_found()
            elif event is NEED_DATA or isinstance(event, Disconnect):
                break
        if policy is TlsPolicy.REQUIRED and not conn.tls_active:
            replies = option_replies(conn.data_to_send())
            assert all(r in (Reply.ERR_TLS_REQD, Reply.ACK, Reply.ERR_INVALID) for _o, r, _m in replies)
    except ProtocolError:
        pass


# -- client ----------------------------------------------------------------------


def test_client_asks_starttls_first_and_goes_on_after_the_handshake() -> None:
    conn = ClientConnection("disk", tls=True)
    conn.receive_data(greeting())
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(option(Option.STARTTLS))
    conn.receive_data(option_reply(Option.STARTTLS, Reply.ACK))
    assert conn.next_event() == TlsAccepted()
    assert conn.state is ClientState.TLS_HANDSHAKE and conn.data_to_send() == b""
    conn.tls_started()
    assert conn.data_to_send() == option(Option.STRUCTURED_REPLY)
    assert conn.state is ClientState.STRUCTURED_REPLY


def test_client_stops_when_the_server_refuses_tls() -> None:
    conn = ClientConnection("disk", tls=True)
    conn.receive_data(greeting() + option_reply(Option.STARTTLS, Reply.ERR_UNSUP, b"no"))
    event = conn.next_event()
    assert isinstance(event, OptionRefused) and event.reply == Reply.ERR_UNSUP
    assert conn.state is ClientState.CLOSED


def test_client_refuses_clear_text_behind_the_ack() -> None:
    conn = ClientConnection("disk", tls=True)
    conn.receive_data(greeting() + option_reply(Option.STARTTLS, Reply.ACK) + b"injected")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_client_tls_started_out_of_turn_is_misuse() -> None:
    conn = ClientConnection("disk", tls=True)
    with pytest.raises(LocalProtocolError):
        conn.tls_started()
