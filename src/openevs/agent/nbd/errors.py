"""Errors of the NBD layer, under the project's one root (`OpenEvsError`).

`ProtocolError` is a broken wire rule: `LocalProtocolError` when we misuse
the sans-IO API or would break the rules, `RemoteProtocolError` when the
peer did. `NbdError` is an error reply from a server (carrying the wire
errno); `NbdConnectionClosed` is a connection that ended while requests
were pending; `NbdOptionRefused` is a handshake option the server refused.
"""

from __future__ import annotations

import os

from openevs.domain.errors import OpenEvsError

__all__ = [
    "LocalProtocolError",
    "NbdConnectionClosed",
    "NbdError",
    "NbdOptionRefused",
    "OpenEvsError",
    "ProtocolError",
    "RemoteProtocolError",
]


class ProtocolError(OpenEvsError):
    """A wire protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """We broke the protocol's rules (a bug on our side or a misuse of the API)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol's rules."""


class NbdError(OpenEvsError):
    """The server answered a request with an error (``errno`` is the wire value)."""

    def __init__(self, errno: int, message: str = "") -> None:
        text = message or os.strerror(errno)
        super().__init__(f"NBD error {errno}: {text}")
        self.errno = errno


class NbdConnectionClosed(ConnectionError):
    """The NBD connection is closed (dropped by the peer or closed locally)."""


class NbdOptionRefused(OpenEvsError):
    """The server refused a handshake option (``reply`` is the NBD_REP_ERR_* value)."""

    def __init__(self, option: int, reply: int, message: str = "") -> None:
        super().__init__(f"NBD option {option} refused with reply {reply:#x}: {message}")
        self.option = option
        self.reply = reply
