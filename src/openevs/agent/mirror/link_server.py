"""The secondary's end of the replication link: every pair's traffic on a few connections.

A primary agent upgrades a connection to its peer's NBD port to the link
protocol (wire.py) and sends, on a small pool of such connections, the
requests of all of its pairs with that peer. Here each request's handle
names the pair's link export; the handle was given by OPEN.

Rules this module keeps:

- a handle belongs to the link session (the token of the upgrade) that
  opened it: another session's connection cannot use it;
- a newer OPEN of a link export makes the older handle stale, and answers
  only after the older handle's requests in flight have ended — so a write
  stuck in an old session (a black-holed link that comes back) either
  landed before the new session began or is refused (ESTALE);
- `revoke(export)` (a demotion, a deletion) does the same without a new
  handle; when the last connection of a session closes, its handles go;
- requests run eagerly, with no Task even for one that suspends (FUA, FLUSH);
- a connection stops reading while its requests in flight carry more than
  MAX_IN_FLIGHT_BYTES (backpressure); a protocol error drops it;
- with `tls` (the agent has a certificate) an upgraded connection is mutual
  TLS from its first byte after the upgrade, and is served only if the peer
  holds an agent certificate; anything else is closed before a frame is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import cast

from openevs.agent.mirror import wire
from openevs.agent.mirror.outbox import Outbox
from openevs.agent.mirror.stats import MIRROR_STATS
from openevs.agent.mirror.wire import FrameReader, Kind, LinkRequest
from openevs.agent.nbd.buffers import BufferPool
from openevs.agent.nbd.eager import EagerRun, run_eagerly
from openevs.agent.nbd.export import FileExport
from openevs.security import PeerRejected
from openevs.security.identity import CertRole
from openevs.security.tls import require_peer

log = logging.getLogger(__name__)

MAX_IN_FLIGHT_BYTES = 64 << 20
DRAIN_TIMEOUT_S = 5.0
_STAT_NAMES = {kind: kind.name.lower() for kind in Kind}  # not per request: Enum.name is slow


@dataclass(eq=False)
class _Handle:
    number: int
    export_name: str
    session: str
    token: str
    export: FileExport
    in_flight: int = 0
    valid: bool = True
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class LinkServer:
    """The link connections this agent serves, and the pairs' handles on them."""

    def __init__(
        self, resolve: Callable[[str], FileExport | None], tls: ssl.SSLContext | None = None
    ) -> None:
        self._resolve = resolve  # link export name -> the DR volume's writable export
        self.tls = tls
        self._handles: dict[int, _Handle] = {}
        self._current: dict[str, _Handle] = {}  # link export -> its valid handle
        self._numbers = itertools.count(1)
        self._connections: set[_ServerConnection] = set()
        self.pool = BufferPool()  # the large payloads received, reused

    # -- what the NBD server and the node call ------------------------------

    def accept(self, sock: socket.socket, token: str, trailing: bytes) -> None:
        """An NBD connection upgraded to the link (nbd/owner.py LinkHandler)."""
        loop = asyncio.get_running_loop()
        if self.tls is not None and trailing:
            log.warning("replication link: clear-text bytes where the TLS handshake must begin; closed")
            sock.close()
            return
        conn = _ServerConnection(self, token)
        self._connections.add(conn)

        async def attach() -> None:
            try:
                await loop.connect_accepted_socket(lambda: conn, sock, ssl=self.tls)
            except ssl.SSLError as exc:  # no certificate, another CA's: the handshake fails
                log.warning("replication link refused: %s", exc)
                self._forget(conn)
                sock.close()
                return
            except OSError as exc:
                log.info("replication link connection lost at once: %s", exc)
                self._forget(conn)
                sock.close()
                return
            if trailing:
                conn.data_received(trailing)

        conn.attaching = loop.create_task(attach())

    def open_count(self, export_name: str) -> int:
        """1 when a primary holds a valid handle of `export_name` (the secondary's link_up)."""
        handle = self._current.get(export_name)
        return 1 if handle is not None and handle.valid else 0

    async def revoke(self, export_name: str) -> None:
        """No request of `export_name` is served after this returns."""
        handle = self._current.pop(export_name, None)
        if handle is not None:
            await self._invalidate(handle)

    def close(self) -> None:
        for conn in list(self._connections):
            conn.abort()
        for handle in list(self._handles.values()):
            handle.valid = False
        self._handles.clear()
        self._current.clear()

    # -- handles ------------------------------------------------------------

    async def _invalidate(self, handle: _Handle) -> None:
        handle.valid = False
        self._handles.pop(handle.number, None)
        if handle.in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    await handle.drained.wait()
            if handle.in_flight:
                log.warning("replication link %s: requests still in flight", handle.export_name[:8])

    async def _open(self, token: str, name: str) -> tuple[int, bytes]:
        export_name, sep, session = name.rpartition(wire.SESSION_SEP)
        if not sep or not export_name:
            return errno.EINVAL, b""
        export = self._resolve(export_name)
        if export is None:
            return wire.ENOENT, b""
        old = self._current.get(export_name)
        if old is not None and old.session == session and old.token == token and old.valid:
            handle = old  # the same OPEN again
        else:
            if old is not None:
                await self._invalidate(old)
            export = self._resolve(export_name)  # it may have been revoked meanwhile
            if export is None:
                return wire.ENOENT, b""
            handle = _Handle(next(self._numbers), export_name, session, token, export)
            self._handles[handle.number] = handle
            self._current[export_name] = handle
        opened = wire.Opened(handle.number, export.size_bytes, export.read_only)
        return 0, wire.encode_opened(opened)

    def _handle(self, token: str, number: int) -> _Handle | None:
        handle = self._handles.get(number)
        if handle is None or not handle.valid or handle.token != token:
            return None
        return handle

    async def serve(self, token: str, request: LinkRequest) -> tuple[int, bytes]:
        """Carry out one request; (errno or 0, reply payload)."""
        if request.kind is Kind.OPEN:
            try:
                name = bytes(request.payload).decode()
            except UnicodeDecodeError:
                return errno.EINVAL, b""
            return await self._open(token, name)
        handle = self._handle(token, request.handle)
        if handle is None:
            return wire.ESTALE, b""
        if request.kind is Kind.CLOSE:
            await self._close_handle(handle)
            return 0, b""
        handle.in_flight += 1
        handle.drained.clear()
        started = perf_counter()
        try:
            result = await self._io(handle.export, request)
            if not result and (served := MIRROR_STATS.served.get(_STAT_NAMES[request.kind])) is not None:
                served.observe(request.length, perf_counter() - started)
            return result, b""
        finally:
            handle.in_flight -= 1
            if not handle.in_flight:
                handle.drained.set()

    async def _close_handle(self, handle: _Handle) -> None:
        if self._current.get(handle.export_name) is handle:
            del self._current[handle.export_name]
        await self._invalidate(handle)

    @staticmethod
    async def _io(export: FileExport, request: LinkRequest) -> int:
        kind = request.kind
        if kind is not Kind.FLUSH and request.offset + request.length > export.size_bytes:
            return errno.EINVAL
        if export.read_only and kind is not Kind.FLUSH:
            return errno.EPERM
        try:
            if kind is Kind.WRITE:
                await export.write(request.offset, request.payload, request.fua)
            elif kind is Kind.WRITE_ZEROES:
                await export.write_zeroes(request.offset, request.length, request.fua, may_trim=True)
            elif kind is Kind.TRIM:
                await export.trim(request.offset, request.length)
            else:
                await export.flush()
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def _forget(self, conn: _ServerConnection) -> None:
        self._connections.discard(conn)
        if any(c.token == conn.token for c in self._connections):
            return
        for handle in [h for h in self._handles.values() if h.token == conn.token]:
            handle.valid = False
            del self._handles[handle.number]
            if self._current.get(handle.export_name) is handle:
                del self._current[handle.export_name]


class _ServerConnection(asyncio.BufferedProtocol):
    """Requests are received into the reader's memory (a large payload into a pooled
    buffer of its own, handed to pwrite and back to the pool); the replies of a
    burst leave in one send (outbox.py)."""

    def __init__(self, server: LinkServer, token: str) -> None:
        self.server = server
        self.token = token
        self.reader = FrameReader(requests=True, allocate=server.pool.get)
        self.transport: asyncio.Transport | None = None
        self.attaching: asyncio.Task[None] | None = None
        self._out: Outbox | None = None
        self._runs: set[EagerRun] = set()  # requests that suspended (referenced until they end)
        self._loop = asyncio.get_running_loop()  # asked once: each call costs a getpid
        self._in_flight_bytes = 0
        self._paused = False
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is one without subclassing it
        self.transport = transport
        self._out = Outbox(transport)
        if self.server.tls is not None:
            try:
                require_peer(transport.get_extra_info("ssl_object"), CertRole.AGENT)
            except PeerRejected as exc:
                log.warning("replication link refused: %s", exc)
                self.abort()
                return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        self.reader.buffer_updated(nbytes)
        self._process()

    def data_received(self, data: bytes) -> None:
        """Bytes that came before the upgrade's end (the NBD layer read them)."""
        if self._closed:
            return
        try:
            self.reader.receive_data(data)
        except wire.WireError as exc:
            log.info("replication link connection broke the protocol: %s", exc)
            self.abort()
            return
        self._process()

    def _process(self) -> None:
        try:
            while (frame := self.reader.next_frame()) is not None:
                assert isinstance(frame, LinkRequest)
                self._start(frame)
        except wire.WireError as exc:
            log.info("replication link connection broke the protocol: %s", exc)
            self.abort()
            return
        if self._in_flight_bytes > MAX_IN_FLIGHT_BYTES and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()

    def _start(self, request: LinkRequest) -> None:
        size = len(request.payload)
        self._in_flight_bytes += size
        # A write into the page cache never suspends: answered inline. One that does
        # (FUA, FLUSH) goes on without a Task either (nbd/eager.py).
        done, run = run_eagerly(self._answer(request, size), self._loop, self._answered)
        if not done:
            assert isinstance(run, EagerRun)
            self._runs.add(run)

    def _answered(self, run: EagerRun, _result: object, exc: BaseException | None) -> None:
        self._runs.discard(run)
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            log.error("replication link request failed", exc_info=exc)

    async def _answer(self, request: LinkRequest, size: int) -> None:
        cancelled = False
        try:
            error, payload = await self.server.serve(self.token, request)
        except asyncio.CancelledError:
            cancelled = True  # a thread may still read the payload: never recycle it
            raise
        except Exception:
            log.exception("replication link request %s failed", request.kind.name)
            error, payload = errno.EIO, b""
        finally:
            self._in_flight_bytes -= size
            if isinstance(request.payload, memoryview) and not cancelled:
                # Later: the transport still holds its slice of the buffer while it calls
                # buffer_updated (where this ran eagerly), and a shared buffer is not pooled.
                self._loop.call_soon(self.server.pool.put, request.payload)
        if self._closed or self._out is None or self.transport is None:
            return
        self._out.add(wire.encode_reply(error, request.cookie, payload))
        if self._paused and self._in_flight_bytes <= MAX_IN_FLIGHT_BYTES // 2:
            self._paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self._out is not None:
            self._out.pause()

    def resume_writing(self) -> None:
        if self._out is not None:
            self._out.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._out is not None:
            self._out.clear()
        self.server._forget(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        else:
            self._closed = True
            if self.attaching is not None:
                self.attaching.cancel()
            self.server._forget(self)
