"""Events that the sans-IO NBD server core (`protocol.py`) hands to its I/O layer.

Small immutable-ish dataclasses; `NEED_DATA` is the sentinel for "feed me
more bytes (or answer the pending lookup) before asking again".
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import CMD_FLAG_FUA, Command, Option


@dataclass(frozen=True, slots=True)
class ExportLookup:
    """The client named an export; answer with `export_found` / `export_not_found`.

    `option` is INFO (stay in negotiation), GO or EXPORT_NAME (enter
    transmission on success).
    """

    name: str
    option: Option


@dataclass(frozen=True, slots=True)
class ExportChosen:
    """Transmission phase entered on export `name`."""

    name: str
    size_bytes: int
    flags: int
    structured_replies: bool
    block_status: bool


@dataclass(frozen=True, slots=True)
class LinkUpgrade:
    """The client asked for the replication link protocol (the NBD part is over)."""

    token: str  # the client's link session
    trailing: bytes  # what it sent after the option, already received


@dataclass(slots=True)
class Request:
    """A valid transmission request; `payload` is set for WRITE only (bytes when it
    arrived with its header, else the buffer from the payload allocator)."""

    kind: Command
    cookie: int
    offset: int
    length: int
    flags: int
    payload: bytes | bytearray | memoryview | None = None

    @property
    def fua(self) -> bool:
        return bool(self.flags & CMD_FLAG_FUA)


@dataclass(frozen=True, slots=True)
class StartTls:
    """The client asked for NBD_OPT_STARTTLS and its ACK is queued: send it, run the
    TLS handshake over the same connection, then call `tls_started()` (or close).
    Every later byte in both directions goes through TLS."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The client ended the session softly (NBD_OPT_ABORT or NBD_CMD_DISC), or an
    EXPORT_NAME could not be satisfied; the I/O layer closes after pending work."""

    reason: str


class NeedData:
    """Sentinel type: no complete event is buffered."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()

Event = ExportLookup | ExportChosen | Request | StartTls | Disconnect | LinkUpgrade
