"""Server side of the NBD protocol, sans-IO (fixed newstyle handshake + transmission).

Rules this module keeps:
- It imports no asyncio, socket, file or clock. Bytes come in through
  `receive_data()` (or, without a copy, `get_buffer()` + `buffer_updated()`),
  events come out of `next_event()`, bytes the core produced by itself
  (greeting, option replies, automatic error replies) come out of
  `data_to_send()`, and transmission replies are built by the `reply_*`
  methods, which return the buffers to write (several, to avoid copying data).
- Export lookups are an event/answer pair (`ExportLookup`, then
  `export_found()` / `export_not_found()`), so policy stays with the caller.
- Buffers have limits. A peer that breaks a MUST (bad magic, unknown client
  flags, an option or write payload over the limit) puts the connection into
  its terminal error state: that call raises `RemoteProtocolError` and every
  later call raises again. Misuse of this API raises `LocalProtocolError`.
- Invalid requests that can be answered (unknown command or flag, out of
  range, write to a read-only export) get an error reply queued in
  `data_to_send()` and produce no event.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Final, NoReturn

from . import constants as c
from .constants import Command, Errno, Info, Option, Reply
from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    NEED_DATA,
    Disconnect,
    Event,
    ExportChosen,
    ExportLookup,
    NeedData,
    Request,
)
from .replies import ReplyBuilder

__all__ = ["ServerConnection", "State", "NEED_DATA"]

META_CONTEXT_ID: Final = 1
DEFAULT_MAX_OPTION_BYTES: Final = 64 * 1024
DEFAULT_MAX_OPTIONS: Final = 256
RECV_BUFFER_BYTES: Final = 256 * 1024

_REQUEST = c.REQUEST_HEADER
_REQUEST_SIZE: Final = _REQUEST.size
_OPTION_HEADER_SIZE: Final = c.OPTION_HEADER.size
_COMMANDS: Final = {int(cmd): cmd for cmd in Command}
_WRITE_LIKE: Final = frozenset({Command.WRITE, Command.TRIM, Command.WRITE_ZEROES})


class State(enum.Enum):
    CLIENT_FLAGS = "client_flags"
    OPTIONS = "options"
    LOOKUP = "lookup"
    TRANSMISSION = "transmission"
    CLOSED = "closed"
    ERROR = "error"


class Trigger(enum.Enum):
    FLAGS_ACCEPTED = "flags_accepted"
    LOOKUP_STARTED = "lookup_started"
    LOOKUP_ANSWERED = "lookup_answered"
    EXPORT_ENTERED = "export_entered"
    CLOSE = "close"


TRANSITIONS: Final[dict[tuple[State, Trigger], State]] = {
    (State.CLIENT_FLAGS, Trigger.FLAGS_ACCEPTED): State.OPTIONS,
    (State.OPTIONS, Trigger.LOOKUP_STARTED): State.LOOKUP,
    (State.LOOKUP, Trigger.LOOKUP_ANSWERED): State.OPTIONS,
    (State.LOOKUP, Trigger.EXPORT_ENTERED): State.TRANSMISSION,
    (State.LOOKUP, Trigger.CLOSE): State.CLOSED,
    (State.OPTIONS, Trigger.CLOSE): State.CLOSED,
    (State.TRANSMISSION, Trigger.CLOSE): State.CLOSED,
}

# Command flags each command accepts (FUA is valid on every command).
_ALLOWED_FLAGS: Final = {
    Command.READ: c.CMD_FLAG_FUA | c.CMD_FLAG_DF,
    Command.WRITE: c.CMD_FLAG_FUA,
    Command.DISC: c.CMD_FLAG_FUA,
    Command.FLUSH: c.CMD_FLAG_FUA,
    Command.TRIM: c.CMD_FLAG_FUA,
    Command.CACHE: c.CMD_FLAG_FUA,
    Command.WRITE_ZEROES: c.CMD_FLAG_FUA | c.CMD_FLAG_NO_HOLE | c.CMD_FLAG_FAST_ZERO,
    Command.BLOCK_STATUS: c.CMD_FLAG_FUA | c.CMD_FLAG_REQ_ONE,
}


class ServerConnection(ReplyBuilder):
    """One NBD connection seen from the server, from greeting to close."""

    def __init__(
        self,
        *,
        max_payload: int = c.MAX_PAYLOAD,
        max_option_bytes: int = DEFAULT_MAX_OPTION_BYTES,
        max_options: int = DEFAULT_MAX_OPTIONS,
        payload_allocator: Callable[[int], bytearray | memoryview] = bytearray,
    ) -> None:
        """`payload_allocator(n)` gives a writable buffer of exactly n bytes for a
        write payload that does not fit in the receive buffer (a pool, say)."""
        super().__init__()
        self._allocate = payload_allocator
        self.max_payload = max_payload
        self.max_option_bytes = max_option_bytes
        self.max_options = max_options
        self._state = State.CLIENT_FLAGS
        self._error: str | None = None
        self._out = bytearray(
            c.GREETING.pack(c.NBDMAGIC, c.IHAVEOPT, c.FLAG_FIXED_NEWSTYLE | c.FLAG_NO_ZEROES)
        )
        self._default_rbuf_bytes = max(RECV_BUFFER_BYTES, 2 * (max_option_bytes + 16))
        self._rbuf = bytearray(self._default_rbuf_bytes)
        self._start = 0
        self._end = 0
        self._max_buffered = max_payload + self._default_rbuf_bytes
        self._payload: bytearray | memoryview | None = None
        self._payload_view: memoryview | None = None
        self._payload_filled = 0
        self._payload_request: Request | None = None
        self._payload_error = 0
        self._events: list[Event] = []
        self._options_seen = 0
        self._no_zeroes = False
        self._meta_export: str | None = None
        self._lookup: tuple[Option, str, tuple[int, ...]] | None = None
        self.export_name: str | None = None
        self.size_bytes = 0
        self.flags = 0
        self.read_only = False
        self.block_status = False

    # -- state ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def awaiting_payload(self) -> bool:
        """True while a write payload is being received (more bytes are due now)."""
        view = self._payload_view
        return view is not None and self._payload_filled < len(view)

    def _transition(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[(self._state, trigger)]
        except KeyError:
            raise LocalProtocolError(
                f"cannot {trigger.value} in state {self._state.value}"
            ) from None

    def _fail(self, message: str) -> NoReturn:
        self._state = State.ERROR
        self._error = message
        raise RemoteProtocolError(message)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(f"connection is in error state: {self._error}")

    # -- bytes in ---------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """A writable buffer for the next received bytes (zero-copy receive).

        Fill a prefix of it, then call `buffer_updated(n)`. Process events
        between calls; the buffer is never empty.
        """
        self._check_usable()
        view = self._payload_view
        if view is not None and self._payload_filled < len(view):
            return view[self._payload_filled :]
        rbuf = self._rbuf
        if self._start == self._end:
            self._start = self._end = 0
            if len(rbuf) > self._default_rbuf_bytes:
                rbuf = self._rbuf = bytearray(self._default_rbuf_bytes)
        elif len(rbuf) - self._end < len(rbuf) // 4:
            n = self._end - self._start
            rbuf[:n] = rbuf[self._start : self._end]
            self._start, self._end = 0, n
        if self._end == len(rbuf):
            if len(rbuf) >= self._max_buffered:
                self._fail("peer sent more data than the receive buffer limit")
            rbuf.extend(bytes(min(len(rbuf), self._max_buffered - len(rbuf))))
        return memoryview(rbuf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` bytes were written at the start of the last `get_buffer()`."""
        self._check_usable()
        view = self._payload_view
        if view is not None and self._payload_filled < len(view):
            self._payload_filled += nbytes
        else:
            self._end += nbytes

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes (copying variant of get_buffer/buffer_updated)."""
        self._check_usable()
        if self._state is State.CLOSED:
            return  # nothing may follow DISC/ABORT; ignore it
        view = memoryview(data).cast("B")
        while view:
            if self._state is State.TRANSMISSION:
                self._parse_ahead()
            target = self.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def _parse_ahead(self) -> None:
        """Move buffered events out of the receive buffer so bulk input stays bounded."""
        while True:
            event = self._next_request()
            if event is NEED_DATA:
                return
            assert not isinstance(event, NeedData)
            self._events.append(event)

    # -- events -----------------------------------------------------------

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA (also while a lookup awaits its answer)."""
        self._check_usable()
        if self._events:
            return self._events.pop(0)
        state = self._state
        if state is State.TRANSMISSION:
            return self._next_request()
        if state is State.OPTIONS:
            return self._next_option()
        if state is State.CLIENT_FLAGS:
            return self._client_flags()
        return NEED_DATA

    def data_to_send(self) -> bytes:
        """Bytes the core produced by itself since the last call."""
        self._check_usable()
        out = bytes(self._out)
        self._out.clear()
        return out

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

    # -- option haggling --------------------------------------------------

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
        return self.next_event()

    def _option_reply(self, option: int, reply: Reply, data: bytes = b"") -> None:
        self._out += c.OPTION_REPLY_HEADER.pack(c.OPTION_REPLY_MAGIC, option, reply, len(data))
        self._out += data

    def _handle_option(self, option: int, data: bytes) -> Event | None:
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
            parsed = _parse_info_request(data)
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
        parsed = _parse_meta_request(data)
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
                    ">HIII", Info.BLOCK_SIZE, c.MIN_BLOCK_SIZE, c.PREFERRED_BLOCK_SIZE,
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
        self._events.append(
            ExportChosen(name, size_bytes, flags, self.structured, self.block_status)
        )

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

    # -- transmission ---------------------------------------------------

    def _next_request(self) -> Event | NeedData:
        while True:
            if self._payload_request is not None:
                if self._payload is None or self._payload_filled < len(self._payload):
                    return NEED_DATA
                request, error = self._payload_request, self._payload_error
                request.payload = self._payload
                self._payload_request = self._payload = self._payload_view = None
                if not error:
                    return request
                self._out += self.reply_error(request.cookie, error)
                continue
            start = self._start
            if self._end - start < _REQUEST_SIZE:
                return NEED_DATA
            magic, flags, kind, cookie, offset, length = _REQUEST.unpack_from(self._rbuf, start)
            start += _REQUEST_SIZE
            self._start = start
            if magic != c.REQUEST_MAGIC:
                self._fail(f"bad request magic {magic:#x}")
            command = _COMMANDS.get(kind)
            if command is Command.WRITE:
                if length > self.max_payload:
                    self._fail(f"write payload of {length} bytes over the limit")
                request = Request(command, cookie, offset, length, flags)
                error = self._validate(request)
                if self._end - start >= length:
                    request.payload = bytes(self._rbuf[start : start + length])
                    self._start = start + length
                else:
                    self._begin_payload(request, error)
                    return NEED_DATA
            elif command is None:
                self._out += self.reply_error(cookie, Errno.EINVAL, "unknown command")
                continue
            elif command is Command.DISC:
                self._transition(Trigger.CLOSE)
                return Disconnect("disc")
            else:
                request = Request(command, cookie, offset, length, flags)
                error = self._validate(request)
            if error:
                self._out += self.reply_error(cookie, error)
            elif length == 0 and command is not Command.FLUSH:
                self._out += self._reply_empty(request)
            else:
                return request

    def _begin_payload(self, request: Request, error: int) -> None:
        have = self._end - self._start
        payload = self._allocate(request.length)
        if len(payload) != request.length:
            raise LocalProtocolError("payload allocator returned a buffer of the wrong size")
        payload[:have] = self._rbuf[self._start : self._end]
        self._start = self._end = 0
        self._payload = payload
        self._payload_view = memoryview(payload)
        self._payload_filled = have
        self._payload_request = request
        self._payload_error = error

    def _validate(self, request: Request) -> int:
        """The wire errno this request must be refused with, or 0."""
        command, length = request.kind, request.length
        if request.flags & ~_ALLOWED_FLAGS[command]:
            return Errno.EINVAL
        if request.flags & c.CMD_FLAG_DF and not self.structured:
            return Errno.EINVAL
        if command in _WRITE_LIKE and self.read_only:
            return Errno.EPERM
        if command is Command.FLUSH:
            return Errno.EINVAL if request.offset or length else 0
        if command is Command.READ and length > self.max_payload:
            return Errno.EINVAL
        if command is Command.BLOCK_STATUS and (not self.block_status or length == 0):
            return Errno.EINVAL
        if request.offset + length > self.size_bytes:
            if command in (Command.WRITE, Command.WRITE_ZEROES):
                return Errno.ENOSPC
            return Errno.EINVAL
        return 0

    def _reply_empty(self, request: Request) -> bytes:
        if request.kind is Command.READ and self.structured:
            return self.reply_done(request.cookie)
        return self.reply_ok(request.cookie)


def _parse_info_request(data: bytes) -> tuple[str, tuple[int, ...]] | None:
    """(name, info types) of an INFO/GO request, or None if malformed."""
    if len(data) < 6:
        return None
    (name_len,) = c.U32.unpack_from(data, 0)
    if name_len > len(data) - 6 or name_len > c.MAX_STRING:
        return None
    (count,) = c.U16.unpack_from(data, 4 + name_len)
    if len(data) != 6 + name_len + 2 * count:
        return None
    try:
        name = data[4 : 4 + name_len].decode()
    except UnicodeDecodeError:
        return None
    infos = struct.unpack_from(f">{count}H", data, 6 + name_len)
    return name, tuple(infos)


def _parse_meta_request(data: bytes) -> tuple[str, list[str]] | None:
    """(export name, queries) of a LIST/SET_META_CONTEXT request, or None."""
    try:
        name, pos = _read_string(data, 0)
        if len(data) - pos < 4:
            return None
        (count,) = c.U32.unpack_from(data, pos)
        pos += 4
        queries: list[str] = []
        for _ in range(count):
            query, pos = _read_string(data, pos)
            queries.append(query)
    except ValueError:  # includes UnicodeDecodeError
        return None
    return (name, queries) if pos == len(data) else None


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    if len(data) - pos < 4:
        raise ValueError("truncated")
    (length,) = c.U32.unpack_from(data, pos)
    pos += 4
    if length > len(data) - pos or length > c.MAX_STRING:
        raise ValueError("string overruns the option")
    return data[pos : pos + length].decode(), pos + length
