"""Events that the sans-IO NBD client core (`client_protocol.py`) hands to its I/O layer.

The client's counterpart of `events.py`; `NEED_DATA` is shared with the
server side and means "feed me more bytes before asking again".
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import Option
from .events import NEED_DATA, NeedData

__all__ = [
    "NEED_DATA",
    "ClientEvent",
    "ExportEntered",
    "NeedData",
    "OptionRefused",
    "RequestDone",
    "RequestFailed",
    "TlsAccepted",
]


@dataclass(frozen=True, slots=True)
class ExportEntered:
    """The server accepted GO: the transmission phase has begun."""

    size_bytes: int
    flags: int
    structured: bool
    meta_context_id: int | None
    block_size: tuple[int, int, int]  # minimum, preferred, maximum


@dataclass(frozen=True, slots=True)
class OptionRefused:
    """The server refused an option the session cannot do without; it is over."""

    option: Option
    reply: int  # the NBD_REP_ERR_* value
    message: str


@dataclass(frozen=True, slots=True)
class TlsAccepted:
    """The server ACKed NBD_OPT_STARTTLS: run the TLS handshake on the connection now,
    then call `tls_started()`; every later byte goes through TLS."""


@dataclass(frozen=True, slots=True)
class RequestDone:
    """The request with `cookie` succeeded.

    `result` is the data of a READ (bytes), the (length, flags) extents of a
    BLOCK_STATUS, and None for every other command.
    """

    cookie: int
    result: bytes | list[tuple[int, int]] | None


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """The server answered the request with `cookie` with an error (wire errno)."""

    cookie: int
    errno: int
    message: str


ClientEvent = ExportEntered | OptionRefused | TlsAccepted | RequestDone | RequestFailed
