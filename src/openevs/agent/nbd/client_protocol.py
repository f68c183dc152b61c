"""Client side of the NBD protocol, sans-IO (fixed newstyle handshake + transmission).

This module holds the connection, its buffers and the transmission phase; the
handshake half lives in `client_handshake.py`, the events in `client_events.py`.

Rules this module keeps:
- It imports no asyncio, socket, file or clock. Bytes come in through
  `receive_data()` (or, without a copy, `get_buffer()` + `buffer_updated()`),
  events come out of `next_event()`, handshake bytes come out of
  `data_to_send()`, and `request()` / `disconnect()` return the bytes of a
  request header (a WRITE's payload is sent by the caller right after it,
  from where it is).
- Every request gets a fresh cookie; replies may come in any order and are
  matched by cookie. A READ's data is received straight into its result
  buffer (its chunks where they belong), not copied through the receive
  buffer; BLOCK_STATUS extents are collected over chunks; the first error
  chunk of a request decides its answer.
- Buffers have limits: the receive buffer has a fixed size, an option reply
  or a non-data chunk is bounded, a READ's data by the length asked for and
  extents per request by `max_extents`. A server that breaks a MUST (bad
  magic, unknown cookie, a chunk outside its request, a bound exceeded)
  puts the connection into its terminal error state: that call raises
  `RemoteProtocolError` and every later call raises again. Misuse of this
  API raises `LocalProtocolError`.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final

from . import constants as c
from .client_events import NEED_DATA, ClientEvent, NeedData, RequestDone, RequestFailed
from .client_handshake import TRANSITIONS, ClientNegotiation, ClientState, Trigger
from .constants import Command
from .errors import LocalProtocolError

__all__ = ["NEED_DATA", "TRANSITIONS", "ClientConnection", "ClientState"]

DEFAULT_MAX_OPTION_BYTES: Final = 64 * 1024
DEFAULT_MAX_CHUNK_BYTES: Final = 1024 * 1024
RECV_BUFFER_BYTES: Final = 64 * 1024

_SIMPLE: Final = c.SIMPLE_REPLY
_SIMPLE_SIZE: Final = _SIMPLE.size
_CHUNK: Final = c.STRUCTURED_HEADER
_CHUNK_SIZE: Final = _CHUNK.size
_DATA_HEADER_SIZE: Final = _CHUNK_SIZE + 8  # a data chunk's header and offset
_HOLE: Final = c.CHUNK_OFFSET_HOLE
_ERROR_HEAD: Final = struct.Struct(">IH")  # error, message length
_ERROR_BIT: Final = 1 << 15
_READ: Final = int(Command.READ)
_BLOCK_STATUS: Final = int(Command.BLOCK_STATUS)


@dataclass(slots=True)
class _Pending:
    """A request the server has not finished answering."""

    kind: int
    offset: int
    length: int
    data: bytes | None = None  # a READ answered by one data chunk covering it all
    buffer: bytearray | None = None  # a READ's result, assembled from chunks
    extents: list[tuple[int, int]] = field(default_factory=list)
    error: tuple[int, str] | None = None

    def result_buffer(self) -> bytearray:
        if self.buffer is None:
            self.buffer = bytearray(self.data) if self.data is not None else bytearray(self.length)
            self.data = None
        return self.buffer


class ClientConnection(ClientNegotiation):
    """One NBD connection to export `export_name`, seen from the client."""

    def __init__(
        self,
        export_name: str,
        *,
        structured: bool = True,
        tls: bool = False,
        max_option_bytes: int = DEFAULT_MAX_OPTION_BYTES,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    ) -> None:
        """`structured`: ask for structured replies (and base:allocation); `tls`: ask
        for STARTTLS first and go on only once TLS is up."""
        self._name = export_name.encode()
        self._want_structured = structured
        self._want_tls = tls
        self.max_option_bytes = max_option_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.max_extents = max_chunk_bytes // 8
        self._state = ClientState.GREETING
        self._error = None
        self._error_cookie = None
        self._out = bytearray()
        # Two of the largest option replies fit: a handshake message waits here whole.
        self._rbuf = bytearray(max(RECV_BUFFER_BYTES, 2 * (max_option_bytes + c.OPTION_REPLY_HEADER.size)))
        self._start = 0
        self._end = 0
        self._body: memoryview | None = None  # where the rest of a message body goes
        self._body_filled = 0
        self._body_then: Callable[[], ClientEvent | None] | None = None
        self._events: deque[ClientEvent] = deque()
        self._pending: dict[int, _Pending] = {}
        self._next_cookie = 1
        self.size_bytes = 0
        self.flags = 0
        self.structured = False
        self.meta_context_id = None
        self.block_size = (c.MIN_BLOCK_SIZE, c.PREFERRED_BLOCK_SIZE, c.MAX_PAYLOAD)

    @property
    def awaiting_payload(self) -> bool:
        """True while a message body is being received (more bytes are due now)."""
        body = self._body
        return body is not None and self._body_filled < len(body)

    @property
    def pending_count(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        """Memory the connection holds for input: receive buffer and result buffers."""
        held = sum(len(p.buffer or p.data or b"") for p in self._pending.values())
        return len(self._rbuf) + held

    # -- bytes in ---------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """A writable buffer for the next received bytes (zero-copy receive).

        Fill a prefix of it, then call `buffer_updated(n)`. Take the events
        (`next_event()` until NEED_DATA) between calls; the buffer is never empty.
        """
        self._check_usable()
        body = self._body
        if body is not None and self._body_filled < len(body):
            return body[self._body_filled :]
        rbuf = self._rbuf
        if self._start == self._end:
            self._start = self._end = 0
        elif len(rbuf) - self._end < len(rbuf) // 4:
            n = self._end - self._start
            rbuf[:n] = rbuf[self._start : self._end]
            self._start, self._end = 0, n
        if self._end == len(rbuf):
            raise LocalProtocolError("receive buffer full: take the events first")
        return memoryview(rbuf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` bytes were written at the start of the last `get_buffer()`."""
        self._check_usable()
        body = self._body
        if body is not None and self._body_filled < len(body):
            self._body_filled += nbytes
        else:
            self._end += nbytes

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes (copying variant of get_buffer/buffer_updated)."""
        self._check_usable()
        view = memoryview(data).cast("B")
        while view:
            self._parse_ahead()
            target = self.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def _parse_ahead(self) -> None:
        """Move complete events out of the receive buffer so bulk input stays bounded."""
        while (event := self._next()) is not NEED_DATA:
            assert not isinstance(event, NeedData)
            self._events.append(event)

    # -- events and bytes out ---------------------------------------------

    def next_event(self) -> ClientEvent | NeedData:
        """The next event, or NEED_DATA."""
        self._check_usable()
        if self._events:
            return self._events.popleft()
        return self._next()

    def _next(self) -> ClientEvent | NeedData:
        state = self._state
        if state is ClientState.TRANSMISSION:
            return self._next_reply()
        if state is ClientState.CLOSED:
            self._start = self._end = 0  # nothing is expected any more: drop it
            return NEED_DATA
        return self._next_handshake()

    def data_to_send(self) -> bytes:
        """Handshake bytes the core produced since the last call."""
        self._check_usable()
        out = bytes(self._out)
        self._out.clear()
        return out

    def request(self, kind: int, offset: int, length: int, flags: int = 0) -> tuple[int, bytes]:
        """Start a request: its cookie and the header to send.

        A WRITE's `length` bytes of payload must follow the header on the wire.
        Any command number and flags are sent as given (the server judges them).
        """
        self._check_usable()
        if self._state is not ClientState.TRANSMISSION:
            raise LocalProtocolError(f"cannot send a request in state {self._state.value}")
        cookie = self._next_cookie
        self._next_cookie = cookie + 1
        self._pending[cookie] = _Pending(kind, offset, length)
        return cookie, c.REQUEST_HEADER.pack(c.REQUEST_MAGIC, flags, kind, cookie, offset, length)

    def disconnect(self) -> bytes:
        """NBD_CMD_DISC: the session ends; whatever the server sends later is ignored."""
        self._check_usable()
        self._transition(Trigger.DISCONNECT)
        self._pending.clear()
        return c.REQUEST_HEADER.pack(c.REQUEST_MAGIC, 0, Command.DISC, 0, 0, 0)

    # -- transmission: replies ------------------------------------------

    def _next_reply(self) -> ClientEvent | NeedData:
        while True:
            if self._body is not None:
                if self._body_filled < len(self._body):
                    return NEED_DATA
                then = self._body_then
                self._body = self._body_then = None
                assert then is not None
                event = then()
                if event is not None:
                    return event
                continue
            start = self._start
            have = self._end - start
            if have < 4:
                return NEED_DATA
            rbuf = self._rbuf
            (magic,) = c.U32.unpack_from(rbuf, start)
            if magic == c.SIMPLE_REPLY_MAGIC:
                if have < _SIMPLE_SIZE:
                    return NEED_DATA
                _magic, error, cookie = _SIMPLE.unpack_from(rbuf, start)
                self._start = start + _SIMPLE_SIZE
                event = self._simple_reply(cookie, error)
            elif magic == c.STRUCTURED_REPLY_MAGIC:
                if have < _CHUNK_SIZE:
                    return NEED_DATA
                _magic, flags, ctype, cookie, length = _CHUNK.unpack_from(rbuf, start)
                pending = self._pending.get(cookie)
                if pending is None:
                    self._fail(f"reply for unknown cookie {cookie}")
                if ctype == c.CHUNK_OFFSET_DATA and pending.kind == _READ:
                    if length <= 8:
                        self._fail("data chunk without data")
                    if have < _DATA_HEADER_SIZE:
                        return NEED_DATA
                    (offset,) = c.U64.unpack_from(rbuf, start + _CHUNK_SIZE)
                    self._start = start + _DATA_HEADER_SIZE
                    event = self._data_chunk(cookie, pending, flags, offset, length - 8)
                else:
                    self._check_chunk(ctype, length)
                    self._start = start + _CHUNK_SIZE
                    event = self._take_body(length, partial(self._chunk, cookie, pending, flags, ctype))
            else:
                self._fail(f"bad reply magic {magic:#x}")
            if event is not None:
                return event

    def _simple_reply(self, cookie: int, error: int) -> ClientEvent | None:
        pending = self._pending.pop(cookie, None)
        if pending is None:
            self._fail(f"reply for unknown cookie {cookie}")
        if error:
            return RequestFailed(cookie, error, "")
        if pending.kind != _READ:
            return RequestDone(cookie, None)
        return self._take_body(pending.length, partial(RequestDone, cookie))

    def _take_body(self, length: int, then: Callable[[bytes], ClientEvent | None]) -> ClientEvent | None:
        """Hand the next `length` bytes to `then`, now if they are buffered, else once
        they have arrived (received into a buffer of their own)."""
        start = self._start
        have = self._end - start
        if have >= length:
            self._start = start + length
            return then(bytes(memoryview(self._rbuf)[start : start + length]))
        body = bytearray(length)
        body[:have] = memoryview(self._rbuf)[start : self._end]
        self._start = self._end = 0
        self._begin_body(memoryview(body)[have:], partial(_finish_body, then, body))
        return None

    def _begin_body(self, view: memoryview, then: Callable[[], ClientEvent | None]) -> None:
        self._body = view
        self._body_filled = 0
        self._body_then = then

    def _check_chunk(self, ctype: int, length: int) -> None:
        """A non-data chunk's header must promise a well-formed, bounded payload."""
        if length > self.max_chunk_bytes:
            self._fail(f"reply chunk of {length} bytes over the limit")
        if ctype == _HOLE:
            ok = length == 12
        elif ctype == c.CHUNK_BLOCK_STATUS:
            ok = length >= 12 and length % 8 == 4
        elif ctype & _ERROR_BIT:
            ok = length >= 6
        else:
            ok = ctype in (c.CHUNK_NONE, c.CHUNK_OFFSET_DATA)  # data for a non-READ: ignored
        if not ok:
            self._fail(f"unexpected reply chunk type {ctype}")

    def _chunk(
        self, cookie: int, pending: _Pending, flags: int, ctype: int, payload: bytes
    ) -> ClientEvent | None:
        if ctype == c.CHUNK_BLOCK_STATUS:
            count = (len(payload) - 4) // 8
            if len(pending.extents) + count > self.max_extents:
                self._fail("too many extents in a block status reply")
            ints = struct.unpack_from(f">{2 * count}I", payload, 4)
            pending.extents.extend(zip(ints[::2], ints[1::2], strict=True))
        elif ctype & _ERROR_BIT:
            error, msg_len = _ERROR_HEAD.unpack_from(payload)
            if pending.error is None:
                pending.error = (error, payload[6 : 6 + msg_len].decode(errors="replace"))
        # A hole needs nothing: a READ's result buffer starts as zeroes.
        return self._chunk_done(cookie, pending, flags)

    def _data_chunk(
        self, cookie: int, pending: _Pending, flags: int, offset: int, size: int
    ) -> ClientEvent | None:
        begin = offset - pending.offset
        if begin < 0 or begin + size > pending.length:
            self._fail("read chunk outside the request", cookie)
        start = self._start
        have = min(size, self._end - start)
        rbuf = memoryview(self._rbuf)
        if have == size and size == pending.length and pending.buffer is None and pending.data is None:
            pending.data = bytes(rbuf[start : start + size])  # the usual case: all of it at once
            self._start = start + size
            return self._chunk_done(cookie, pending, flags)
        result = memoryview(pending.result_buffer())
        result[begin : begin + have] = rbuf[start : start + have]
        self._start = start + have
        if have == size:
            return self._chunk_done(cookie, pending, flags)
        self._start = self._end = 0
        self._begin_body(
            result[begin + have : begin + size], partial(self._chunk_done, cookie, pending, flags)
        )
        return None

    def _chunk_done(self, cookie: int, pending: _Pending, flags: int) -> ClientEvent | None:
        if not flags & c.REPLY_FLAG_DONE:
            return None
        del self._pending[cookie]
        if pending.error is not None:
            return RequestFailed(cookie, *pending.error)
        if pending.kind == _BLOCK_STATUS:
            return RequestDone(cookie, pending.extents)
        if pending.kind != _READ:
            return RequestDone(cookie, None)
        if pending.buffer is not None:
            return RequestDone(cookie, bytes(pending.buffer))
        return RequestDone(cookie, pending.data if pending.data is not None else bytes(pending.length))


def _finish_body(then: Callable[[bytes], ClientEvent | None], body: bytearray) -> ClientEvent | None:
    return then(bytes(body))
