"""The replication link protocol between two agents (sans-IO): frames, no sockets.

A link connection starts as an NBD connection to the peer agent's NBD port
and is upgraded during option haggling with the openevs option
`OPT_OPENEVS_LINK` (its data: the primary's link session token). After the
ACK both ends speak these frames; every pair's traffic shares the
connection, each request naming its pair by a *handle*:

    request  = magic u32 | kind u16 | flags u16 | cookie u64 | handle u32
               | offset u64 | length u32 | payload (WRITE: `length` bytes;
               OPEN: `length` bytes of the pair's link name)
    reply    = magic u32 | error u32 | cookie u64 | length u32 | payload
               (OPEN: handle u32 | size u64 | read_only u8)

OPEN names a link export plus a pair session (`<export>~<session>`); the
answer is the handle the pair's later requests carry. A newer OPEN of the
same export makes the older handle stale (ESTALE), so a request stuck in
an old session can never land after the resync that followed it.

Rules this module keeps: no I/O; the receive buffer is bounded (one
staging buffer, plus the payload of the frame being received, at most
`MAX_PAYLOAD_BYTES`); after a protocol violation the reader stays in its
error state.
"""

from __future__ import annotations

import enum
import errno
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NoReturn

from openevs.agent.nbd import constants as nbd

OPT_OPENEVS_LINK: Final = nbd.OPT_OPENEVS_LINK  # an NBD option number of our own
REQUEST_MAGIC: Final = 0x4F45_5251  # "OERQ"
REPLY_MAGIC: Final = 0x4F45_5250  # "OERP"
REQUEST: Final = struct.Struct(">IHHQIQI")
REPLY: Final = struct.Struct(">IIQI")
OPENED: Final = struct.Struct(">IQB")
MAX_PAYLOAD_BYTES: Final = 32 << 20
MAX_NAME_BYTES: Final = 4096
STAGING_BYTES: Final = 256 << 10  # headers and small frames are received here
DIRECT_BYTES: Final = 64 << 10  # payloads this large are received into their own buffer
FLAG_FUA: Final = 1
SESSION_SEP: Final = "~"  # link export ~ pair session

# What an error reply carries (errno numbers; ESTALE: the handle is superseded or revoked).
ESTALE: Final = errno.ESTALE
ENOENT: Final = errno.ENOENT


class Kind(enum.IntEnum):
    OPEN = 1
    CLOSE = 2
    WRITE = 3
    WRITE_ZEROES = 4
    TRIM = 5
    FLUSH = 6


_KINDS: Final = {k.value: k for k in Kind}


class WireError(Exception):
    """The peer broke the link protocol; the connection must be dropped."""


@dataclass(slots=True)
class LinkRequest:
    kind: Kind
    flags: int
    cookie: int
    handle: int
    offset: int
    length: int
    payload: bytes | memoryview = b""  # a memoryview: received into a pooled buffer

    @property
    def fua(self) -> bool:
        return bool(self.flags & FLAG_FUA)


@dataclass(slots=True)
class LinkReply:
    error: int
    cookie: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Opened:
    handle: int
    size_bytes: int
    read_only: bool


def encode_request(
    kind: Kind, cookie: int, handle: int = 0, offset: int = 0, length: int = 0, *, fua: bool = False
) -> bytes:
    """A request header (the payload, if any, is sent right after it)."""
    return REQUEST.pack(REQUEST_MAGIC, kind, FLAG_FUA if fua else 0, cookie, handle, offset, length)


def encode_reply(error: int, cookie: int, payload: bytes = b"") -> bytes:
    return REPLY.pack(REPLY_MAGIC, error, cookie, len(payload)) + payload


def encode_opened(opened: Opened) -> bytes:
    return OPENED.pack(opened.handle, opened.size_bytes, 1 if opened.read_only else 0)


def decode_opened(payload: bytes) -> Opened:
    if len(payload) != OPENED.size:
        raise WireError(f"OPEN answer of {len(payload)} bytes")
    handle, size, read_only = OPENED.unpack(payload)
    return Opened(handle, size, bool(read_only))


class FrameReader:
    """Bytes in, frames out: requests on the serving side, replies on the sending side.

    Two ways in: `receive_data(bytes)`, or, for an asyncio BufferedProtocol,
    `get_buffer()` and `buffer_updated(n)`, which let the socket fill the
    reader's memory itself. Headers and small frames land in one staging
    buffer of STAGING_BYTES; a payload of DIRECT_BYTES or more is received
    straight into a buffer of its own from `allocate` (a pool's), so a large
    write is never copied between the socket and the file. Whoever takes a
    frame with such a payload may give its buffer back to the pool once done.
    """

    def __init__(self, *, requests: bool, allocate: Callable[[int], memoryview] | None = None) -> None:
        self._requests = requests
        self._header = REQUEST if requests else REPLY
        self._allocate = allocate or _fresh_buffer
        self._buf = bytearray(STAGING_BYTES)
        self._start = 0  # the first byte not parsed yet
        self._end = 0  # the end of what was received
        self._pending: LinkRequest | None = None  # a request whose payload is being received
        self._filled = 0
        self._frames: deque[LinkRequest | LinkReply] = deque()  # parsed by receive_data
        self._error: str | None = None

    @property
    def buffered_bytes(self) -> int:
        return self._end - self._start + self._filled

    def get_buffer(self) -> memoryview:
        """Where the next bytes received should go (not empty)."""
        if self._error is not None:
            raise WireError(self._error)
        pending = self._pending
        if pending is not None:
            assert isinstance(pending.payload, memoryview)
            return pending.payload[self._filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < DIRECT_BYTES:  # move the partial frame to the front
            left = self._end - self._start
            self._buf[:left] = self._buf[self._start : self._end]
            self._start, self._end = 0, left
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` were written at the start of the last `get_buffer()`."""
        if self._pending is not None:
            self._filled += nbytes
        else:
            self._end += nbytes

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise WireError(self._error)
        view = memoryview(data).cast("B")
        while view:
            target = self.get_buffer()
            if not target:  # staging full of whole frames: parse them out to make room
                frame = self._parse()
                assert frame is not None
                self._frames.append(frame)
                continue
            n = min(len(target), len(view))
            target[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def _fail(self, message: str) -> NoReturn:
        self._error = message
        raise WireError(message)

    def next_frame(self) -> LinkRequest | LinkReply | None:
        """The next whole frame, or None until more data arrives."""
        if self._frames:
            return self._frames.popleft()
        return self._parse()

    def _parse(self) -> LinkRequest | LinkReply | None:
        if self._error is not None:
            raise WireError(self._error)
        pending = self._pending
        if pending is not None:
            if self._filled < pending.length:
                return None
            self._pending, self._filled = None, 0
            return pending
        buf, start, size = self._buf, self._start, self._header.size
        avail = self._end - start
        if avail < size:
            return None
        if not self._requests:
            magic, error, cookie, carried = REPLY.unpack_from(buf, start)
            if magic != REPLY_MAGIC:
                self._fail(f"bad reply magic {magic:#x}")
            if carried > OPENED.size:
                self._fail(f"reply payload of {carried} bytes")
            if avail < size + carried:
                return None
            self._start = start + size + carried
            return LinkReply(error, cookie, bytes(buf[start + size : self._start]))
        magic, kind, flags, cookie, handle, offset, length = REQUEST.unpack_from(buf, start)
        if magic != REQUEST_MAGIC:
            self._fail(f"bad request magic {magic:#x}")
        if kind not in _KINDS:
            self._fail(f"unknown request kind {kind}")
        kind = _KINDS[kind]
        carried = length if kind is Kind.WRITE or kind is Kind.OPEN else 0
        if carried > (MAX_NAME_BYTES if kind is Kind.OPEN else MAX_PAYLOAD_BYTES):
            self._fail(f"request payload of {carried} bytes over the limit")
        if carried >= DIRECT_BYTES:  # into a buffer of its own, straight from the socket
            payload = self._allocate(carried)
            have = min(avail - size, carried)
            payload[:have] = buf[start + size : start + size + have]
            self._start = start + size + have
            request = LinkRequest(kind, flags, cookie, handle, offset, length, payload)
            if have == carried:
                return request
            self._pending, self._filled = request, have
            return None
        if avail < size + carried:
            return None
        self._start = start + size + carried
        payload_bytes = bytes(buf[start + size : self._start]) if carried else b""
        return LinkRequest(kind, flags, cookie, handle, offset, length, payload_bytes)


def _fresh_buffer(length: int) -> memoryview:
    return memoryview(bytearray(length))


# -- the upgrade from NBD (client side; the server side is nbd/handshake.py) --

GREETING_BYTES: Final = nbd.GREETING.size
UPGRADE_REPLY_BYTES: Final = nbd.OPTION_REPLY_HEADER.size


def upgrade_request(greeting: bytes, token: str) -> bytes:
    """What the client sends after the server's NBD greeting: its flags and the
    link option carrying `token` (the link session)."""
    magic, opt_magic, flags = nbd.GREETING.unpack(greeting)
    if magic != nbd.NBDMAGIC or opt_magic != nbd.IHAVEOPT or not flags & nbd.FLAG_FIXED_NEWSTYLE:
        raise WireError("the peer is not a fixed-newstyle NBD server")
    data = token.encode()
    return (
        nbd.CLIENT_FLAGS.pack(nbd.FLAG_C_FIXED_NEWSTYLE)
        + nbd.OPTION_HEADER.pack(nbd.IHAVEOPT, OPT_OPENEVS_LINK, len(data))
        + data
    )


def check_upgrade_reply(reply: bytes) -> None:
    """The server's answer to the link option (an error reply names no data we need)."""
    magic, option, kind, _length = nbd.OPTION_REPLY_HEADER.unpack(reply)
    if magic != nbd.OPTION_REPLY_MAGIC or option != OPT_OPENEVS_LINK:
        raise WireError("bad answer to the link option")
    if kind != nbd.Reply.ACK:
        raise WireError(f"the peer refused the link option (reply {kind:#x}): not an openevs agent?")
