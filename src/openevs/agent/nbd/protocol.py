"""Server side of the NBD protocol, sans-IO (fixed newstyle handshake + transmission).

This module holds the connection, its buffers and the transmission phase; the
handshake half lives in `handshake.py` and the reply builders in `replies.py`.

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

from collections.abc import Callable
from typing import Final

from . import constants as c
from .constants import Command, Errno
from .errors import LocalProtocolError
from .events import NEED_DATA, Disconnect, Event, NeedData, Request
from .handshake import Negotiation, State, TlsPolicy, Trigger

__all__ = ["NEED_DATA", "ServerConnection", "State", "TlsPolicy"]

DEFAULT_MAX_OPTION_BYTES: Final = 64 * 1024
DEFAULT_MAX_OPTIONS: Final = 256
RECV_BUFFER_BYTES: Final = 256 * 1024
PEEK_BYTES: Final = 4096  # read this far past a header when a large write is expected

_REQUEST = c.REQUEST_HEADER
_REQUEST_SIZE: Final = _REQUEST.size
_COMMANDS: Final = {int(cmd): cmd for cmd in Command}
_WRITE_LIKE: Final = frozenset({Command.WRITE, Command.TRIM, Command.WRITE_ZEROES})

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


class ServerConnection(Negotiation):
    """One NBD connection seen from the server, from greeting to close."""

    def __init__(
        self,
        *,
        max_payload: int = c.MAX_PAYLOAD,
        max_option_bytes: int = DEFAULT_MAX_OPTION_BYTES,
        max_options: int = DEFAULT_MAX_OPTIONS,
        payload_allocator: Callable[[int], bytearray | memoryview] = bytearray,
        tls_policy: TlsPolicy = TlsPolicy.OFF,
        link_upgrade: bool = False,
    ) -> None:
        """`payload_allocator(n)` gives a writable buffer of exactly n bytes for a
        write payload that does not fit in the receive buffer (a pool, say)."""
        super().__init__()
        self._allocate = payload_allocator
        self.max_payload = max_payload
        self.max_option_bytes = max_option_bytes
        self.max_options = max_options
        self.link_upgrade = link_upgrade
        self._state = State.CLIENT_FLAGS
        self._error = None
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
        self._expect_large = False  # the last request's payload did not fit the buffer
        self._events: list[Event] = []
        self._options_seen = 0
        self._no_zeroes = False
        self._meta_export = None
        self._lookup = None
        self.export_name: str | None = None
        self.size_bytes = 0
        self.flags = 0
        self.read_only = False
        self.block_status = False
        self.tls_policy = tls_policy
        self.tls_active = False

    @property
    def awaiting_payload(self) -> bool:
        """True while a write payload is being received (more bytes are due now)."""
        view = self._payload_view
        return view is not None and self._payload_filled < len(view)

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
        if self._expect_large:
            # The last request was a large write: read little past the next header,
            # so the next large payload lands in its own buffer instead of being
            # copied there from this one (up to a quarter of a 1 MiB write).
            return memoryview(rbuf)[self._end : self._end + PEEK_BYTES]
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
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

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
            self._expect_large = False  # _begin_payload says otherwise
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
                    request.payload = bytes(memoryview(self._rbuf)[start : start + length])
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
        self._expect_large = request.length >= PEEK_BYTES
        payload = self._allocate(request.length)
        if len(payload) != request.length:
            raise LocalProtocolError("payload allocator returned a buffer of the wrong size")
        payload[:have] = memoryview(self._rbuf)[self._start : self._end]  # one copy, not two
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
