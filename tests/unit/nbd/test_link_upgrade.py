"""The openevs link option in the sans-IO NBD server handshake: an agent's server
ACKs it and ends NBD on the connection; any other server refuses it."""

from __future__ import annotations

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.constants import Reply
from openevs.agent.nbd.events import NEED_DATA, LinkUpgrade
from openevs.agent.nbd.protocol import ServerConnection, State

from .nbd_wire import CLIENT_FLAGS, option, option_replies


def _negotiating(link_upgrade: bool) -> ServerConnection:
    conn = ServerConnection(link_upgrade=link_upgrade)
    conn.data_to_send()
    conn.receive_data(CLIENT_FLAGS)
    assert conn.next_event() is NEED_DATA
    return conn


def test_the_link_option_is_acked_and_hands_over_the_rest_of_the_stream() -> None:
    conn = _negotiating(True)
    conn.receive_data(option(c.OPT_OPENEVS_LINK, b"session-1") + b"first frame bytes")
    event = conn.next_event()
    assert event == LinkUpgrade(token="session-1", trailing=b"first frame bytes")
    assert option_replies(conn.data_to_send()) == [(c.OPT_OPENEVS_LINK, Reply.ACK, b"")]
    assert conn.state is State.UPGRADED


def test_without_link_upgrade_the_option_is_unsupported_and_negotiation_goes_on() -> None:
    conn = _negotiating(False)
    conn.receive_data(option(c.OPT_OPENEVS_LINK, b"session-1"))
    assert conn.next_event() is NEED_DATA
    [(opt, reply, _)] = option_replies(conn.data_to_send())
    assert (opt, reply) == (c.OPT_OPENEVS_LINK, Reply.ERR_UNSUP)
    assert conn.state is State.OPTIONS
