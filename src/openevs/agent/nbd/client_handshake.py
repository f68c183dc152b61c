"""Handshake phase of the sans-IO NBD client core, as the client sees it.

Part of `client_protocol.ClientConnection`; the same rules apply (no I/O,
bounded buffers, terminal error state after a server's violation).

The client speaks fixed newstyle only and asks one option at a time, each
once its predecessor's final reply has arrived: STARTTLS first when TLS is
wanted (its ACK is the `TlsAccepted` event; the I/O layer runs the TLS
handshake and calls `tls_started()`; a refusal ends the session, and a
server that sends anything behind the ACK in clear text is a protocol
violation), then STRUCTURED_REPLY (when
wanted; a refusal only means simple replies), SET_META_CONTEXT
`base:allocation` (once structured replies are on), then GO asking for
INFO_BLOCK_SIZE. A refused SET_META_CONTEXT or GO ends the session with
`OptionRefused`. Option replies it does not need are skipped.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NoReturn

from . import constants as c
from .client_events import NEED_DATA, ClientEvent, ExportEntered, NeedData, OptionRefused, TlsAccepted
from .constants import Info, Option, Reply
from .errors import LocalProtocolError, RemoteProtocolError

_GREETING_SIZE: Final = c.GREETING.size
_OPTION_REPLY: Final = c.OPTION_REPLY_HEADER
_OPTION_REPLY_SIZE: Final = _OPTION_REPLY.size
_ERROR_BIT: Final = 1 << 31
_EXPORT_INFO: Final = struct.Struct(">QH")  # size, transmission flags
_BLOCK_SIZE_INFO: Final = struct.Struct(">III")  # minimum, preferred, maximum


class ClientState(enum.Enum):
    GREETING = "greeting"  # waiting for the server's greeting
    STARTTLS = "starttls"  # waiting for the answer to STARTTLS
    TLS_HANDSHAKE = "tls_handshake"  # the I/O layer runs the TLS handshake
    STRUCTURED_REPLY = "structured_reply"  # waiting for the answer to that option
    META_CONTEXT = "meta_context"
    GO = "go"
    TRANSMISSION = "transmission"
    CLOSED = "closed"
    ERROR = "error"


class Trigger(enum.Enum):
    ASK_STARTTLS = "ask_starttls"
    TLS_ACCEPTED = "tls_accepted"
    ASK_STRUCTURED_REPLY = "ask_structured_reply"
    ASK_META_CONTEXT = "ask_meta_context"
    ASK_GO = "ask_go"
    EXPORT_ENTERED = "export_entered"
    REFUSED = "refused"
    DISCONNECT = "disconnect"


TRANSITIONS: Final[dict[tuple[ClientState, Trigger], ClientState]] = {
    (ClientState.GREETING, Trigger.ASK_STRUCTURED_REPLY): ClientState.STRUCTURED_REPLY,
    (ClientState.GREETING, Trigger.ASK_GO): ClientState.GO,
    (ClientState.GREETING, Trigger.ASK_STARTTLS): ClientState.STARTTLS,
    (ClientState.STARTTLS, Trigger.TLS_ACCEPTED): ClientState.TLS_HANDSHAKE,
    (ClientState.STARTTLS, Trigger.REFUSED): ClientState.CLOSED,
    (ClientState.TLS_HANDSHAKE, Trigger.ASK_STRUCTURED_REPLY): ClientState.STRUCTURED_REPLY,
    (ClientState.TLS_HANDSHAKE, Trigger.ASK_GO): ClientState.GO,
    (ClientState.STRUCTURED_REPLY, Trigger.ASK_META_CONTEXT): ClientState.META_CONTEXT,
    (ClientState.STRUCTURED_REPLY, Trigger.ASK_GO): ClientState.GO,
    (ClientState.META_CONTEXT, Trigger.ASK_GO): ClientState.GO,
    (ClientState.META_CONTEXT, Trigger.REFUSED): ClientState.CLOSED,
    (ClientState.GO, Trigger.EXPORT_ENTERED): ClientState.TRANSMISSION,
    (ClientState.GO, Trigger.REFUSED): ClientState.CLOSED,
    (ClientState.TRANSMISSION, Trigger.DISCONNECT): ClientState.CLOSED,
}

# The option whose replies each handshake state waits for.
_ASKED: Final = {
    ClientState.STARTTLS: Option.STARTTLS,
    ClientState.STRUCTURED_REPLY: Option.STRUCTURED_REPLY,
    ClientState.META_CONTEXT: Option.SET_META_CONTEXT,
    ClientState.GO: Option.GO,
}


class ClientNegotiation:
    """State, errors and the handshake half of a client connection."""

    _state: ClientState
    _error: str | None
    _error_cookie: int | None
    _out: bytearray
    _rbuf: bytearray
    _start: int
    _end: int
    _name: bytes
    _want_structured: bool
    _want_tls: bool
    max_option_bytes: int
    size_bytes: int
    flags: int
    structured: bool
    meta_context_id: int | None
    block_size: tuple[int, int, int]

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def waiting_for(self) -> str:
        """What the connection waits for from the server, for messages."""
        option = _ASKED.get(self._state)
        if option is not None:
            return option.name
        return "the greeting" if self._state is ClientState.GREETING else self._state.value

    @property
    def error_cookie(self) -> int | None:
        """The request whose reply broke the protocol, when one did."""
        return self._error_cookie

    def _transition(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[(self._state, trigger)]
        except KeyError:
            raise LocalProtocolError(f"cannot {trigger.value} in state {self._state.value}") from None

    def _fail(self, message: str, cookie: int | None = None) -> NoReturn:
        self._state = ClientState.ERROR
        self._error = message
        self._error_cookie = cookie
        raise RemoteProtocolError(message)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"connection is in error state: {self._error}")

    # -- the handshake ----------------------------------------------------

    def _next_handshake(self) -> ClientEvent | NeedData:
        if self._state is ClientState.GREETING:
            if self._end - self._start < _GREETING_SIZE:
                return NEED_DATA
            self._greeting()
        while (option := _ASKED.get(self._state)) is not None:
            start = self._start
            if self._end - start < _OPTION_REPLY_SIZE:
                return NEED_DATA
            magic, echoed, reply, length = _OPTION_REPLY.unpack_from(self._rbuf, start)
            if magic != c.OPTION_REPLY_MAGIC or echoed != option:
                self._fail(f"bad reply to option {option.name}")
            if length > self.max_option_bytes:
                self._fail("option reply too large")
            begin = start + _OPTION_REPLY_SIZE
            if self._end - begin < length:
                return NEED_DATA  # the buffer holds two of the largest replies
            payload = bytes(self._rbuf[begin : begin + length])
            self._start = begin + length
            event = self._option_reply(option, reply, payload)
            if event is not None:
                return event
        return NEED_DATA

    def _greeting(self) -> None:
        magic, ihaveopt, hflags = c.GREETING.unpack_from(self._rbuf, self._start)
        self._start += _GREETING_SIZE
        if magic != c.NBDMAGIC or ihaveopt != c.IHAVEOPT:
            self._fail("not a fixed newstyle NBD server")
        if not hflags & c.FLAG_FIXED_NEWSTYLE:
            self._fail("server does not support fixed newstyle")
        cflags = c.FLAG_C_FIXED_NEWSTYLE | (c.FLAG_C_NO_ZEROES if hflags & c.FLAG_NO_ZEROES else 0)
        self._out += c.CLIENT_FLAGS.pack(cflags)
        if self._want_tls:
            self._ask(Trigger.ASK_STARTTLS, Option.STARTTLS, b"")
        else:
            self._first_options()

    def tls_started(self) -> None:
        """The I/O layer finished the TLS handshake that `TlsAccepted` asked for."""
        self._check_usable()
        if self._state is not ClientState.TLS_HANDSHAKE:
            raise LocalProtocolError(f"no TLS handshake is due in state {self._state.value}")
        self._first_options()

    def _first_options(self) -> None:
        if self._want_structured:
            self._ask(Trigger.ASK_STRUCTURED_REPLY, Option.STRUCTURED_REPLY, b"")
        else:
            self._ask_go()

    def _ask(self, trigger: Trigger, option: Option, data: bytes) -> None:
        self._transition(trigger)
        self._out += c.OPTION_HEADER.pack(c.IHAVEOPT, option, len(data)) + data

    def _ask_go(self) -> None:
        self._ask(Trigger.ASK_GO, Option.GO, _string(self._name) + struct.pack(">HH", 1, Info.BLOCK_SIZE))

    def _option_reply(self, option: Option, reply: int, payload: bytes) -> ClientEvent | None:
        """Handle one reply to `option`; an event when the session's course is set."""
        if option is Option.STARTTLS and reply == Reply.ACK:
            if self._end != self._start:
                self._fail("clear-text data behind the STARTTLS acknowledgement")
            self._transition(Trigger.TLS_ACCEPTED)
            return TlsAccepted()
        if option is Option.STRUCTURED_REPLY:
            if reply == Reply.ACK or reply & _ERROR_BIT:
                self.structured = reply == Reply.ACK
                if self.structured:
                    query = c.BASE_ALLOCATION.encode()
                    data = _string(self._name) + c.U32.pack(1) + _string(query)
                    self._ask(Trigger.ASK_META_CONTEXT, Option.SET_META_CONTEXT, data)
                else:
                    self._ask_go()
            return None
        if reply == Reply.ACK:
            if option is Option.SET_META_CONTEXT:
                self._ask_go()
                return None
            self._transition(Trigger.EXPORT_ENTERED)
            return ExportEntered(
                self.size_bytes, self.flags, self.structured, self.meta_context_id, self.block_size
            )
        if reply & _ERROR_BIT:
            self._transition(Trigger.REFUSED)
            return OptionRefused(option, reply, payload.decode(errors="replace"))
        if option is Option.SET_META_CONTEXT:
            if reply == Reply.META_CONTEXT and payload[4:] == c.BASE_ALLOCATION.encode():
                (self.meta_context_id,) = c.U32.unpack_from(payload)
        elif reply == Reply.INFO and len(payload) >= 2:
            (info,) = c.U16.unpack_from(payload)
            if info == Info.EXPORT and len(payload) == 12:
                self.size_bytes, self.flags = _EXPORT_INFO.unpack_from(payload, 2)
            elif info == Info.BLOCK_SIZE and len(payload) == 14:
                self.block_size = _BLOCK_SIZE_INFO.unpack_from(payload, 2)
        return None


def _string(data: bytes) -> bytes:
    return c.U32.pack(len(data)) + data
