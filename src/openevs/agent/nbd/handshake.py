"""Handshake phase of the sans-IO NBD server core: client flags, option haggling,
export lookups. Part of `protocol.ServerConnection`; the same rules apply (no
I/O, bounded buffers, terminal error state after a peer's violation).

Export names are per-attachment secrets: NBD_OPT_LIST lists nothing, and an
unknown name gets NBD_REP_ERR_UNKNOWN. EXTENDED_HEADERS and any other
option it does not know get NBD_REP_ERR_UNSUP and negotiation goes on.

TLS (`tls_policy`, the spec's modes): OFF is NOTLS (STARTTLS gets
ERR_UNSUP); OPTIONAL is SELECTIVETLS with no TLS-only export (the client
may upgrade, nothing forces it); REQUIRED is FORCEDTLS: before TLS every
option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD and EXPORT_NAME
(which cannot be refused) ends the session. STARTTLS is ACKed once, as a
`StartTls` event for the I/O layer, which runs the TLS handshake and calls
`tls_started()`; a second one gets ERR_INVALID. Bytes already buffered
behind a STARTTLS arrived in clear text where only TLS may follow (an
injection attempt): the connection fails. What was negotiated before TLS
(structured replies, the meta context) is forgotten once TLS is up, so a
man in the middle cannot have set it.

One option of our own, c.OPT_OPENEVS_LINK (when `link_upgrade` is on), is
ACKed and ends the NBD protocol on this connection: what follows is the
agents' replication link (agent/mirror/wire.py). It is answered before TLS
whatever the policy, because the link runs its own mutual TLS on the
upgraded connection (agent/mirror/link_server.py), and refused after
STARTTLS (a TLS session cannot leave the connection that holds it).
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NoReturn

from . import constants as c
from .constants import Info, Option, Reply
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    NEED_DATA,
    Disconnect,
    Event,
    ExportChosen,
    ExportLookup,
    LinkUpgrade,
    NeedData,
    StartTls,
)  # fmt: skip
from .option_payloads import parse_info_request, parse_meta_request
from .replies import ReplyBuilder

META_CONTEXT_ID: Final = 1
_OPTION_HEADER_SIZE: Final = c.OPTION_HEADER.size


class TlsPolicy(enum.StrEnum):
    OFF = "off"  # NOTLS
    OPTIONAL = "optional"  # SELECTIVETLS, no export TLS-only
    REQUIRED = "required"  # FORCEDTLS


class State(enum.Enum):
    CLIENT_FLAGS = "client_flags"
    OPTIONS = "options"
    LOOKUP = "lookup"
    TLS_HANDSHAKE = "tls_handshake"  # STARTTLS acknowledged; the I/O layer runs the TLS handshake
    TRANSMISSION = "transmission"
    UPGRADED = "upgraded"  # handed to the replication link protocol (mirror/wire.py)
    CLOSED = "closed"
    ERROR = "error"


class Trigger(enum.Enum):
    FLAGS_ACCEPTED = "flags_accepted"
    LOOKUP_STARTED = "lookup_started"
    LOOKUP_ANSWERED = "lookup_answered"
    EXPORT_ENTERED = "export_entered"
    TLS_ACCEPTED = "tls_accepted"
    TLS_STARTED = "tls_started"
    LINK_UPGRADE = "link_upgrade"
    CLOSE = "close"


TRANSITIONS: Final[dict[tuple[State, Trigger], State]] = {
    (State.CLIENT_FLAGS, Trigger.FLAGS_ACCEPTED): State.OPTIONS,
    (State.OPTIONS, Trigger.LOOKUP_STARTED): State.LOOKUP,
    (State.LOOKUP, Trigger.LOOKUP_ANSWERED): State.OPTIONS,
    (State.LOOKUP, Trigger.EXPORT_ENTERED): State.TRANSMISSION,
    (State.LOOKUP, Trigger.CLOSE): State.CLOSED,
    (State.OPTIONS, Trigger.TLS_ACCEPTED): State.TLS_HANDSHAKE,
    (State.TLS_HANDSHAKE, Trigger.TLS_STARTED): State.OPTIONS,
    (State.TLS_HANDSHAKE, Trigger.CLOSE): State.CLOSED,
    (State.OPTIONS, Trigger.CLOSE): State.CLOSED,
    (State.OPTIONS, Trigger.LINK_UPGRADE): State.UPGRADED,
    (State.TRANSMISSION, Trigger.CLOSE): State.CLOSED,
}


class Negotiation(ReplyBuilder):
    """State, errors and the handshake half of a server connection."""

    _state: State
    _error: str | None
    _out: bytearray
    _rbuf: bytearray
    _start: int
    _end: int
    _events: list[Event]
    _options_seen: int
    _no_zeroes: bool
    _meta_export: str | None
    _lookup: tuple[Option, str, tuple[int, ...]] | None
    max_payload: int
    link_upgrade: bool  # the openevs link option is accepted (an agent's server)
    max_option_bytes: int
    max_options: int
    export_name: str | None
    size_bytes: int
    flags: int
    read_only: bool
    block_status: bool
    tls_policy: TlsPolicy
    tls_active: bool

    @property
    def state(self) -> State:
        return self._state

    def _transition(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[(self._state, trigger)]
        except KeyError:
            raise LocalProtocolError(f"cannot {trigger.value} in state {self._state.value}") from None

    def _fail(self, message: str) -> NoReturn:
        self._state = State.ERROR
        self._error = message
        raise RemoteProtocolError(message)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"connection is in error state: {self._error}")

    # -- option haggling --------------------------------------------------

    def _client_flags(self) -> Event | NeedData:
        if self._end - self._start < 4:
            return NEED_DATA
        (flags,) = c.CLIENT_FLAGS.unpack_from(self._rbuf, self._start)
        self._start += 4
        if flags & ~(c.FLAG_C_FIXED_NEWSTYLE | c.FLAG_C_NO_ZEROES):
            self._fail(f"unknown client flags {flags:#x}")
        self._no_zeroes = bool(flags & c.FLAG_C_NO_ZEROES)
        self._transition(Trigger.FLAGS_ACCEPTED)
        return self._next_option()

    def _next_option(self) -> Event | NeedData:
        while self._state is State.OPTIONS:
            if self._end - self._start < _OPTION_HEADER_SIZE:
                return NEED_DATA
            magic, option, length = c.OPTION_HEADER.unpack_from(self._rbuf, self._start)
            if magic != c.IHAVEOPT:
                self._fail(f"bad option magic {magic:#x}")
            if length > self.max_option_bytes:
                self._fail(f"option {option} carries {length} bytes, over the limit")
            if self._end - self._start < _OPTION_HEADER_SIZE + length:
                return NEED_DATA
            begin = self._start + _OPTION_HEADER_SIZE
            data = bytes(self._rbuf[begin : begin + length])
            self._start = begin + length
            self._options_seen += 1
            if self._options_seen > self.max_options:
                self._fail("too many options")
            event = self._handle_option(option, data)
            if event is not None:
                return event
        return NEED_DATA

    def _option_reply(self, option: int, reply: Reply, data: bytes = b"") -> None:
        self._out += c.OPTION_REPLY_HEADER.pack(c.OPTION_REPLY_MAGIC, option, reply, len(data))
        self._out += data

    def _handle_option(self, option: int, data: bytes) -> Event | None:
        if option == Option.STARTTLS:
            return self._starttls(data)
        if option == c.OPT_OPENEVS_LINK and self.link_upgrade:
            return self._link_upgrade(data)
        if self.tls_policy is TlsPolicy.REQUIRED and not self.tls_active and option != Option.ABORT:
            if option == Option.EXPORT_NAME:  # cannot carry an error: the session must end
                self._transition(Trigger.CLOSE)
                return Disconnect("EXPORT_NAME before STARTTLS on a TLS-only server")
            self._option_reply(option, Reply.ERR_TLS_REQD, b"TLS required: send NBD_OPT_STARTTLS first")
            return None
        if option == Option.EXPORT_NAME:
            try:
                name = data.decode()
            except UnicodeDecodeError:
                self._fail("export name is not UTF-8")
            return self._start_lookup(Option.EXPORT_NAME, name, ())
        if option == Option.ABORT:
            self._option_reply(option, Reply.ACK)
            self._transition(Trigger.CLOSE)
            return Disconnect("abort")
        if option == Option.LIST:
            # Export names are per-attachment secrets: list none.
            self._option_reply(option, Reply.ERR_INVALID if data else Reply.ACK)
            return None
        if option in (Option.INFO, Option.GO):
            parsed = parse_info_request(data)
            if parsed is None:
                self._option_reply(option, Reply.ERR_INVALID, b"malformed request")
                return None
            return self._start_lookup(Option(option), *parsed)
        if option == Option.STRUCTURED_REPLY:
            if data:
                self._option_reply(option, Reply.ERR_INVALID, b"unexpected data")
            else:
                self.structured = True
                self._option_reply(option, Reply.ACK)
            return None
        if option in (Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT):
            self._meta_context(option, data)
            return None
        self._option_reply(option, Reply.ERR_UNSUP, b"option not supported")
        return None

    def _link_upgrade(self, data: bytes) -> Event | None:
        if self.tls_active:
            self._option_reply(
                c.OPT_OPENEVS_LINK, Reply.ERR_INVALID, b"upgrade before STARTTLS: the link runs its own TLS"
            )
            return None
        try:
            token = data.decode()
        except UnicodeDecodeError:
            self._fail("link session token is not UTF-8")
        self._option_reply(c.OPT_OPENEVS_LINK, Reply.ACK)
        self._transition(Trigger.LINK_UPGRADE)
        return LinkUpgrade(token, bytes(self._rbuf[self._start : self._end]))

    def _starttls(self, data: bytes) -> Event | None:
        if self.tls_policy is TlsPolicy.OFF:
            self._option_reply(Option.STARTTLS, Reply.ERR_UNSUP, b"TLS is not offered here")
        elif self.tls_active:
            self._option_reply(Option.STARTTLS, Reply.ERR_INVALID, b"TLS is already on")
        elif data:
            self._option_reply(Option.STARTTLS, Reply.ERR_INVALID, b"unexpected data")
        elif self._end != self._start:
            self._fail("clear-text data behind NBD_OPT_STARTTLS")
        else:
            self._option_reply(Option.STARTTLS, Reply.ACK)
            self._transition(Trigger.TLS_ACCEPTED)
            return StartTls()
        return None

    def tls_started(self) -> None:
        """The I/O layer finished the TLS handshake that the `StartTls` event asked for."""
        self._check_usable()
        self._transition(Trigger.TLS_STARTED)
        self.tls_active = True
        self.structured = False  # negotiated in clear text: forgotten
        self._meta_export = None

    def _start_lookup(self, option: Option, name: str, infos: tuple[int, ...]) -> ExportLookup:
        self._lookup = (option, name, infos)
        self._transition(Trigger.LOOKUP_STARTED)
        return ExportLookup(name, option)

    def _meta_context(self, option: int, data: bytes) -> None:
        is_set = option == Option.SET_META_CONTEXT
        if is_set:
            self._meta_export = None  # replaced even when the request fails
        if not self.structured:
            self._option_reply(option, Reply.ERR_INVALID, b"structured replies first")
            return
        parsed = parse_meta_request(data)
        if parsed is None:
            self._option_reply(option, Reply.ERR_INVALID, b"malformed request")
            return
        name, queries = parsed
        if is_set:
            selected = c.BASE_ALLOCATION in queries
        else:
            selected = not queries or any(q in ("base:", c.BASE_ALLOCATION) for q in queries)
        if selected:
            ctx_id = META_CONTEXT_ID if is_set else 0
            payload = c.U32.pack(ctx_id) + c.BASE_ALLOCATION.encode()
            self._option_reply(option, Reply.META_CONTEXT, payload)
            if is_set:
                self._meta_export = name
        self._option_reply(option, Reply.ACK)

    # -- lookup answers -------------------------------------------------

    def export_found(
        self,
        *,
        size_bytes: int,
        read_only: bool,
        multi_conn: bool = True,
        description: str | None = None,
    ) -> None:
        """Answer the pending `ExportLookup`: the export exists."""
        self._check_usable()
        option, name, infos = self._take_lookup()
        flags = c.FLAG_HAS_FLAGS | c.FLAG_SEND_FLUSH | c.FLAG_SEND_FUA | c.FLAG_SEND_CACHE
        if read_only:
            flags |= c.FLAG_READ_ONLY
        else:
            flags |= c.FLAG_SEND_TRIM | c.FLAG_SEND_WRITE_ZEROES | c.FLAG_SEND_FAST_ZERO
        if multi_conn:
            flags |= c.FLAG_CAN_MULTI_CONN
        if self.structured:
            flags |= c.FLAG_SEND_DF
        if option == Option.EXPORT_NAME:
            self._out += c.U64.pack(size_bytes) + c.U16.pack(flags)
            if not self._no_zeroes:
                self._out += bytes(124)
        else:
            info = c.U16.pack(Info.EXPORT) + c.U64.pack(size_bytes) + c.U16.pack(flags)
            self._option_reply(option, Reply.INFO, info)
            if Info.NAME in infos:
                self._option_reply(option, Reply.INFO, c.U16.pack(Info.NAME) + name.encode())
            if Info.DESCRIPTION in infos and description:
                text = description.encode()[: c.MAX_STRING]
                self._option_reply(option, Reply.INFO, c.U16.pack(Info.DESCRIPTION) + text)
            if Info.BLOCK_SIZE in infos:
                sizes = struct.pack(
                    ">HIII",
                    Info.BLOCK_SIZE,
                    c.MIN_BLOCK_SIZE,
                    c.PREFERRED_BLOCK_SIZE,
                    self.max_payload,
                )
                self._option_reply(option, Reply.INFO, sizes)
            self._option_reply(option, Reply.ACK)
            if option == Option.INFO:
                self._transition(Trigger.LOOKUP_ANSWERED)
                return
        self.export_name = name
        self.size_bytes = size_bytes
        self.flags = flags
        self.read_only = read_only
        self.block_status = self.structured and self._meta_export == name
        self._transition(Trigger.EXPORT_ENTERED)
        self._events.append(ExportChosen(name, size_bytes, flags, self.structured, self.block_status))

    def export_not_found(self) -> None:
        """Answer the pending `ExportLookup`: no such export (or not for this client)."""
        self._check_usable()
        option, _name, _infos = self._take_lookup()
        if option == Option.EXPORT_NAME:
            # EXPORT_NAME cannot carry an error: the session must end.
            self._transition(Trigger.CLOSE)
            self._events.append(Disconnect("unknown export"))
            return
        self._option_reply(option, Reply.ERR_UNKNOWN, b"unknown export")
        self._transition(Trigger.LOOKUP_ANSWERED)

    def _take_lookup(self) -> tuple[Option, str, tuple[int, ...]]:
        if self._lookup is None or self._state is not State.LOOKUP:
            raise LocalProtocolError("no export lookup is pending")
        lookup, self._lookup = self._lookup, None
        return lookup
