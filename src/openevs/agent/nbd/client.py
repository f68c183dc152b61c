"""Asyncio NBD client: the agent's own (replication to the peer AZ) and the tests'.

Fixed newstyle handshake with STRUCTURED_REPLY, SET_META_CONTEXT
`base:allocation` and GO. Pipelined: any number of tasks may call it at
once; each request gets a cookie and one reader task matches replies to
them, in whatever order the server sends them. Error replies raise
`NbdError(errno)`; a dropped connection fails every pending and later call
with `NbdConnectionClosed`; a server that breaks the protocol is reported
as `RemoteProtocolError` (and the connection is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import struct
from dataclasses import dataclass, field

from . import constants as c
from .buffers import BufferPool, SendQueue
from .constants import Command, Info, Option, Reply
from .errors import NbdConnectionClosed, NbdError, NbdOptionRefused, RemoteProtocolError

_OPTION_REPLY = c.OPTION_REPLY_HEADER
SEND_BUFFER_BYTES = 4 * 1024 * 1024
_SIMPLE_REST = struct.Struct(">IQ")  # error, cookie
_STRUCTURED_REST = struct.Struct(">HHQI")  # flags, type, cookie, length


@dataclass(slots=True)
class _Pending:
    kind: int
    offset: int
    length: int
    future: asyncio.Future[object]
    chunks: list[tuple[int, bytes | int]] = field(default_factory=list)
    extents: list[tuple[int, int]] = field(default_factory=list)
    error: NbdError | None = None


class NbdClient:
    """One NBD connection to one export."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._cookies = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._closed: BaseException | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.size_bytes = 0
        self.flags = 0
        self.structured = False
        self.meta_context_id: int | None = None
        self.block_size = (c.MIN_BLOCK_SIZE, c.PREFERRED_BLOCK_SIZE, c.MAX_PAYLOAD)
        # After the handshake, requests bypass the StreamWriter: they are queued
        # (payloads by reference, never copied) and sent with sendmsg on a dup of
        # the socket. asyncio 3.11's transport copies whatever the socket does not
        # take at once into its bytearray and sends it in many small steps.
        self._sock: socket.socket | None = None
        self._out: SendQueue | None = None
        self._sending = False

    @property
    def read_only(self) -> bool:
        return bool(self.flags & c.FLAG_READ_ONLY)

    @classmethod
    async def connect(cls, host: str, port: int, export_name: str, *, structured: bool = True) -> NbdClient:
        reader, writer = await asyncio.open_connection(host, port, limit=2 * c.MAX_PAYLOAD)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(reader, writer)
        try:
            await client._handshake(export_name, structured)
        except BaseException:
            writer.close()
            raise
        client._attach_socket()
        client._reader_task = asyncio.create_task(client._read_replies())
        return client

    def _attach_socket(self) -> None:
        raw = self._writer.get_extra_info("socket")
        if raw is None:
            return
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except (OSError, ValueError):
            return
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # a 4 MiB payload fits in one sendmsg
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        self._sock = sock
        self._out = SendQueue(BufferPool(0))

    def _on_writable(self) -> None:
        out, sock = self._out, self._sock
        if out is None or sock is None:
            return
        try:
            out.flush(sock)
        except OSError as exc:
            self._fail_all(exc)
            return
        if not out and self._sending:
            asyncio.get_running_loop().remove_writer(sock.fileno())
            self._sending = False

    def _detach_socket(self) -> None:
        sock, self._sock = self._sock, None
        if self._out is not None:
            self._out.clear()
        if sock is None:
            return
        if self._sending:
            self._sending = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_writer(sock.fileno())
        sock.close()

    def _unshare(self, payload: bytes | bytearray | memoryview) -> None:
        """A cancelled caller may reuse `payload`: what is still queued of it is copied."""
        out = self._out
        if out is None or isinstance(payload, bytes):
            return
        base = payload.obj if isinstance(payload, memoryview) else payload
        items = out._items
        for i, item in enumerate(items):
            if isinstance(item, memoryview) and item.obj is base or item is base:
                items[i] = bytes(item)

    async def __aenter__(self) -> NbdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- handshake --------------------------------------------------------

    async def _handshake(self, name: str, structured: bool) -> None:
        try:
            head = await self._reader.readexactly(c.GREETING.size)
        except asyncio.IncompleteReadError as exc:
            raise NbdConnectionClosed("server closed during the greeting") from exc
        magic, ihaveopt, hflags = c.GREETING.unpack(head)
        if magic != c.NBDMAGIC or ihaveopt != c.IHAVEOPT:
            raise RemoteProtocolError("not a fixed newstyle NBD server")
        if not hflags & c.FLAG_FIXED_NEWSTYLE:
            raise RemoteProtocolError("server does not support fixed newstyle")
        cflags = c.FLAG_C_FIXED_NEWSTYLE | (hflags & c.FLAG_NO_ZEROES and c.FLAG_C_NO_ZEROES)
        self._writer.write(c.CLIENT_FLAGS.pack(cflags))
        if structured:
            replies = await self._option(Option.STRUCTURED_REPLY, b"", refuse_ok=True)
            self.structured = replies is not None
        if self.structured:
            query = c.BASE_ALLOCATION.encode()
            data = _string(name.encode()) + c.U32.pack(1) + _string(query)
            for reply, payload in await self._option(Option.SET_META_CONTEXT, data) or []:
                if reply == Reply.META_CONTEXT and payload[4:] == query:
                    (self.meta_context_id,) = c.U32.unpack_from(payload)
        go = _string(name.encode()) + c.U16.pack(1) + c.U16.pack(Info.BLOCK_SIZE)
        for reply, payload in await self._option(Option.GO, go) or []:
            if reply != Reply.INFO or len(payload) < 2:
                continue
            (info,) = c.U16.unpack_from(payload)
            if info == Info.EXPORT and len(payload) == 12:
                self.size_bytes, self.flags = struct.unpack_from(">QH", payload, 2)
            elif info == Info.BLOCK_SIZE and len(payload) == 14:
                self.block_size = struct.unpack_from(">III", payload, 2)

    async def _option(
        self, option: Option, data: bytes, *, refuse_ok: bool = False
    ) -> list[tuple[int, bytes]] | None:
        """Send one option; its non-final replies, or None if refused and `refuse_ok`."""
        self._writer.write(c.OPTION_HEADER.pack(c.IHAVEOPT, option, len(data)) + data)
        await self._writer.drain()
        replies: list[tuple[int, bytes]] = []
        while True:
            try:
                head = await self._reader.readexactly(_OPTION_REPLY.size)
                magic, echoed, reply, length = _OPTION_REPLY.unpack(head)
                if magic != c.OPTION_REPLY_MAGIC or echoed != option:
                    raise RemoteProtocolError(f"bad reply to option {option.name}")
                if length > 64 * 1024:
                    raise RemoteProtocolError("option reply too large")
                payload = await self._reader.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise NbdConnectionClosed(f"server closed during {option.name}") from exc
            if reply == Reply.ACK:
                return replies
            if reply & (1 << 31):
                if refuse_ok:
                    return None
                raise NbdOptionRefused(option, reply, payload.decode(errors="replace"))
            replies.append((reply, payload))

    # -- requests ---------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        result = await self._request(Command.READ, offset, length)
        assert isinstance(result, bytes)
        return result

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        flags = c.CMD_FLAG_FUA if fua else 0
        await self._request(Command.WRITE, offset, len(data), flags, data)

    async def flush(self) -> None:
        await self._request(Command.FLUSH, 0, 0)

    async def trim(self, offset: int, length: int, fua: bool = False) -> None:
        await self._request(Command.TRIM, offset, length, c.CMD_FLAG_FUA if fua else 0)

    async def write_zeroes(
        self,
        offset: int,
        length: int,
        *,
        fua: bool = False,
        no_hole: bool = False,
        fast: bool = False,
    ) -> None:
        flags = (
            (c.CMD_FLAG_FUA if fua else 0)
            | (c.CMD_FLAG_NO_HOLE if no_hole else 0)
            | (c.CMD_FLAG_FAST_ZERO if fast else 0)
        )
        await self._request(Command.WRITE_ZEROES, offset, length, flags)

    async def cache(self, offset: int, length: int) -> None:
        await self._request(Command.CACHE, offset, length)

    async def block_status(self, offset: int, length: int, *, req_one: bool = False) -> list[tuple[int, int]]:
        """(length, flags) extents of base:allocation from `offset` (may cover less)."""
        flags = c.CMD_FLAG_REQ_ONE if req_one else 0
        result = await self._request(Command.BLOCK_STATUS, offset, length, flags)
        assert isinstance(result, list)
        return result

    async def request_raw(
        self, kind: int, offset: int, length: int, flags: int = 0, payload: bytes = b""
    ) -> object:
        """Send any request, even one the server should refuse (for tests)."""
        return await self._request(kind, offset, length, flags, payload or None)

    def start_write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool = False
    ) -> asyncio.Future[object]:
        """Send a WRITE now (no task, no await); the future of its reply.

        `data` is sent from where it is: keep it unchanged until the future is
        done (a cancelled future copies what is still queued of it)."""
        if self._closed is not None:
            raise NbdConnectionClosed("connection is closed") from self._closed
        if self._out is None:
            return asyncio.ensure_future(self.write(offset, data, fua))
        future = self._submit(Command.WRITE, offset, len(data), c.CMD_FLAG_FUA if fua else 0, data)
        if not isinstance(data, bytes):

            def unshare(f: asyncio.Future[object]) -> None:
                if f.cancelled():
                    self._unshare(data)

            future.add_done_callback(unshare)
        return future

    def _submit(
        self,
        kind: int,
        offset: int,
        length: int,
        flags: int,
        payload: bytes | bytearray | memoryview | None,
    ) -> asyncio.Future[object]:
        """Queue and send a request on the raw socket; the future of its reply."""
        out, sock = self._out, self._sock
        assert out is not None
        cookie = next(self._cookies)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[cookie] = _Pending(kind, offset, length, future)
        out.append(c.REQUEST_HEADER.pack(c.REQUEST_MAGIC, flags, kind, cookie, offset, length))
        if payload is not None:
            out.append(payload)
        if not self._sending and sock is not None:
            try:
                out.flush(sock)
            except OSError as exc:
                self._fail_all(exc)
            else:
                if out:
                    asyncio.get_running_loop().add_writer(sock.fileno(), self._on_writable)
                    self._sending = True
        return future

    async def _request(
        self,
        kind: int,
        offset: int,
        length: int,
        flags: int = 0,
        payload: bytes | bytearray | memoryview | None = None,
    ) -> object:
        if self._closed is not None:
            raise NbdConnectionClosed("connection is closed") from self._closed
        if self._out is not None:
            future = self._submit(kind, offset, length, flags, payload)
            try:
                return await future
            except asyncio.CancelledError:
                if payload is not None:
                    self._unshare(payload)
                raise
        cookie = next(self._cookies)
        future = asyncio.get_running_loop().create_future()
        self._pending[cookie] = _Pending(kind, offset, length, future)
        header = c.REQUEST_HEADER.pack(c.REQUEST_MAGIC, flags, kind, cookie, offset, length)
        if payload is None:
            self._writer.write(header)
        elif len(payload) <= 65536:
            self._writer.write(header + payload)
        else:
            self._writer.write(header)
            self._writer.write(payload)
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            self._fail_all(exc)
        return await future

    # -- replies ----------------------------------------------------------

    async def _read_replies(self) -> None:
        reader = self._reader
        try:
            while True:
                (magic,) = c.U32.unpack(await reader.readexactly(4))
                if magic == c.SIMPLE_REPLY_MAGIC:
                    error, cookie = _SIMPLE_REST.unpack(await reader.readexactly(12))
                    pending = self._take(cookie)
                    if error:
                        _set(pending.future, NbdError(error))
                    elif pending.kind == Command.READ:
                        _set(pending.future, await reader.readexactly(pending.length))
                    else:
                        _set(pending.future, None)
                elif magic == c.STRUCTURED_REPLY_MAGIC:
                    head = await reader.readexactly(_STRUCTURED_REST.size)
                    flags, ctype, cookie, length = _STRUCTURED_REST.unpack(head)
                    chunk_owner = self._pending.get(cookie)
                    if chunk_owner is None:
                        raise RemoteProtocolError(f"reply for unknown cookie {cookie}")
                    self._chunk(chunk_owner, ctype, await reader.readexactly(length))
                    if flags & c.REPLY_FLAG_DONE:
                        self._finish(self._take(cookie))
                else:
                    raise RemoteProtocolError(f"bad reply magic {magic:#x}")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._fail_all(exc)
        except RemoteProtocolError as exc:
            self._fail_all(exc)
            self._writer.close()

    def _take(self, cookie: int) -> _Pending:
        pending = self._pending.pop(cookie, None)
        if pending is None:
            raise RemoteProtocolError(f"reply for unknown cookie {cookie}")
        return pending

    def _chunk(self, pending: _Pending, ctype: int, payload: bytes) -> None:
        if ctype == c.CHUNK_OFFSET_DATA and len(payload) > 8:
            (offset,) = c.U64.unpack_from(payload)
            pending.chunks.append((offset, payload[8:]))
        elif ctype == c.CHUNK_OFFSET_HOLE and len(payload) == 12:
            offset, size = struct.unpack(">QI", payload)
            pending.chunks.append((offset, size))
        elif ctype == c.CHUNK_BLOCK_STATUS and len(payload) >= 12 and len(payload) % 8 == 4:
            values = struct.unpack(f">{(len(payload) - 4) // 4}I", payload[4:])
            pending.extents.extend(zip(values[::2], values[1::2], strict=True))
        elif ctype & (1 << 15) and len(payload) >= 6:
            error, msg_len = struct.unpack_from(">IH", payload)
            message = payload[6 : 6 + msg_len].decode(errors="replace")
            pending.error = pending.error or NbdError(error, message)
        elif ctype != c.CHUNK_NONE:
            raise RemoteProtocolError(f"unexpected reply chunk type {ctype}")

    def _finish(self, pending: _Pending) -> None:
        if pending.error is not None:
            _set(pending.future, pending.error)
        elif pending.kind == Command.BLOCK_STATUS:
            _set(pending.future, pending.extents)
        elif pending.kind == Command.READ:
            try:
                data = _assemble(pending)
            except RemoteProtocolError as exc:
                _set(pending.future, exc)
                raise
            _set(pending.future, data)
        else:
            _set(pending.future, None)

    def _fail_all(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        self._detach_socket()
        pending, self._pending = self._pending, {}
        for item in pending.values():
            error = NbdConnectionClosed(f"connection lost: {exc!r}")
            error.__cause__ = exc
            _set(item.future, error)

    def abort(self) -> None:
        """Drop the connection now: pending requests fail, no DISC, no waiting."""
        self._fail_all(NbdConnectionClosed("connection aborted"))
        self._writer.transport.abort()
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def close(self) -> None:
        """Wait for in-flight requests, send NBD_CMD_DISC and close."""
        if self._pending:
            await asyncio.gather(*(p.future for p in list(self._pending.values())), return_exceptions=True)
        if self._closed is None:
            self._closed = NbdConnectionClosed("closed by the client")
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(c.REQUEST_HEADER.pack(c.REQUEST_MAGIC, 0, Command.DISC, 0, 0, 0))
                await self._writer.drain()
        self._detach_socket()
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


def _string(data: bytes) -> bytes:
    return c.U32.pack(len(data)) + data


def _set(future: asyncio.Future[object], value: object) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def _assemble(pending: _Pending) -> bytes:
    chunks = pending.chunks
    if len(chunks) == 1:
        offset, data = chunks[0]
        if isinstance(data, bytes) and offset == pending.offset and len(data) == pending.length:
            return data
    out = bytearray(pending.length)
    for offset, piece in chunks:
        start = offset - pending.offset
        if isinstance(piece, bytes):
            if start < 0 or start + len(piece) > pending.length:
                raise RemoteProtocolError("read chunk outside the request")
            out[start : start + len(piece)] = piece
    return bytes(out)
