"""One NBD client connection of `NbdServer`: handshake, then transmission.

The handshake runs as a coroutine; the transmission phase runs on the raw
non-blocking socket driven by `add_reader`/`add_writer` callbacks, because
that keeps the hot path short: requests are received straight into their
buffers (`recv_into`), READ/BLOCK_STATUS/CACHE are answered inline (page-cache
reads need no task), write-like requests of exports that allow it
(`eager_writes`) run eagerly and, if they suspend, go on with no task
(eager.py EagerRun: a replicated write's reply is queued in the callback
that received the peer's answer), and all
replies queued during one wake-up leave in a single `sendmsg` (large reads
straight from the file with sendfile).

After NBD_OPT_STARTTLS every byte goes through a `TlsStream` on the same
socket (tls_stream.py): the same callbacks, but reads also drain what the
stream holds in memory, and file data is sent from memory (no sendfile).

Rules: replies never interleave (one send queue, whole messages only);
in-flight requests, their payload bytes and queued output are bounded, and
reading stops while any bound is hit (backpressure); export names are
secrets, so only their first 8 characters are ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from functools import partial
from time import perf_counter

from openevs.security import PeerRejected
from openevs.security.identity import Identity
from openevs.security.tls import peer_identity

from . import constants as c
from .buffers import SendQueue
from .constants import Command, Errno
from .eager import EagerRun, run_eagerly
from .errors import ProtocolError
from .events import NEED_DATA, Disconnect, ExportChosen, ExportLookup, LinkUpgrade, Request, StartTls
from .export import Export
from .owner import Owner, wire_errno
from .protocol import ServerConnection, TlsPolicy
from .replies import merge_extents
from .serving import execute, queue_read
from .stats import NbdStats
from .tls_stream import TlsStream

log = logging.getLogger(__name__)


class Connection:
    """One client connection: handshake coroutine, then callback-driven transmission."""

    def __init__(self, server: Owner, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        policy = server.tls_policy if server.tls_context is not None else TlsPolicy.OFF
        self.proto = ServerConnection(
            payload_allocator=server.pool.get, tls_policy=policy, link_upgrade=server.link_handler is not None
        )
        self.io: socket.socket | TlsStream = sock  # what replies are sent through
        self.tls: TlsStream | None = None
        self.peer: Identity | None = None  # from a verified client certificate
        self.name: str | None = None
        self.export: Export | None = None
        self._out = SendQueue(server.pool)
        self._reading = False
        self._writing = False
        self._resume_scheduled = False
        self._closing = False
        self._closed = False
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._tasks: set[asyncio.Task[bytes] | EagerRun] = set()
        self._done: asyncio.Future[None] = self.loop.create_future()
        self._handshaking = True
        self._sendfile_fd: int | None = None
        self._readinto: Callable[[int, memoryview], None] | None = None
        self._eager = False
        self._stats: list[NbdStats] = []  # set when the export is chosen
        self.task: asyncio.Task[None] | None = None

    def _label(self) -> str:
        return (self.name or "")[:8] or "-"

    async def run(self) -> None:
        try:
            async with asyncio.timeout(self.server.handshake_timeout_s):
                entered = await self._handshake()
            self._handshaking = False
            if entered and not self._closed:
                self._update_reading()
                await self._done
        except (ProtocolError, OSError, TimeoutError) as exc:
            log.info("nbd connection to export %s ended: %s", self._label(), exc)
        except Exception:
            log.exception("nbd connection to export %s failed", self._label())
        finally:
            if self.tls is not None:
                self.tls.close_notify()
            self.abort()
            self.sock.close()
            self.server.forget(self)

    async def _handshake(self) -> bool:
        proto = self.proto
        while True:
            event = proto.next_event()
            if event is NEED_DATA:
                await self._send_handshake()
                if self.tls is not None:
                    n = await self.tls.recv_into_async(proto.get_buffer())
                else:
                    n = await self.loop.sock_recv_into(self.sock, proto.get_buffer())
                if n == 0:
                    return False
                proto.buffer_updated(n)
            elif isinstance(event, StartTls):
                await self._start_tls()
            elif isinstance(event, ExportLookup):
                export = await self.server.resolve(event.name, self.peer)
                if export is None:
                    proto.export_not_found()
                else:
                    self.export = export
                    fileno = getattr(export, "fileno", None)
                    # sendfile would bypass TLS
                    self._sendfile_fd = fileno() if callable(fileno) and self.tls is None else None
                    readinto = getattr(export, "readinto", None)
                    self._readinto = readinto if callable(readinto) else None
                    self._eager = getattr(export, "eager_writes", False) is True
                    proto.export_found(size_bytes=export.size_bytes, read_only=export.read_only)
            elif isinstance(event, ExportChosen):
                self.name = event.name
                self._stats = self.server.stats_for(event.name)
                self.server.register(self, event.name)
                await self._send_handshake()
                return True
            elif isinstance(event, Disconnect):
                await self._send_handshake()
                return False
            elif isinstance(event, LinkUpgrade):
                await self._send_handshake()  # the ACK
                handler = self.server.link_handler
                assert handler is not None  # the option is refused without one
                sock = socket.socket(fileno=self.sock.detach())  # ours no longer: run() closes nothing
                handler(sock, event.token, event.trailing)
                return False

    async def _send_handshake(self) -> None:
        data = self.proto.data_to_send()
        if data and self.tls is not None:
            await self.tls.sendall_async(data)
        elif data:
            await self.loop.sock_sendall(self.sock, data)

    async def _start_tls(self) -> None:
        await self._send_handshake()  # the ACK, in clear text
        assert self.server.tls_context is not None
        self.tls = await TlsStream.start(self.sock, self.server.tls_context, server_side=True)
        self.io = self.tls
        try:
            self.peer = peer_identity(self.tls.ssl_object)
        except PeerRejected:
            self.peer = None  # no certificate (a user), or one that names no role of ours
        self.proto.tls_started()

    # -- transmission: input --------------------------------------------

    def _on_readable(self) -> None:
        proto = self.proto
        try:
            while self._reading:
                buf = proto.get_buffer()
                size = len(buf)
                try:
                    n = self.io.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    break
                del buf
                if n == 0:
                    self.abort()
                    return
                proto.buffer_updated(n)
                self._process()
                if n < size and not proto.awaiting_payload:
                    break  # drained; but a payload usually follows its header closely
            self._flush()
        except ProtocolError as exc:
            log.info("nbd connection to export %s broke the protocol: %s", self._label(), exc)
            with contextlib.suppress(OSError):
                self._out.flush(self.io)  # best effort: answers to the valid requests
            self.abort()
        except OSError as exc:
            log.info("nbd connection to export %s dropped: %s", self._label(), exc)
            self.abort()
        except Exception:
            log.exception("nbd connection to export %s failed", self._label())
            self.abort()

    def _process(self) -> None:
        proto = self.proto
        assert self.export is not None
        # The export may have grown (or shrunk): requests are checked against its size now.
        proto.size_bytes = self.export.size_bytes
        while self._reading:
            event = proto.next_event()
            if event is NEED_DATA:
                break
            if type(event) is Request:
                self._dispatch(event)
            elif isinstance(event, Disconnect):
                self._begin_close()
        self._out.append(proto.data_to_send())

    def _count(self, req: Request, started: float) -> None:
        seconds = perf_counter() - started
        for stats in self._stats:
            stats.by_command[req.kind].observe(req.length, seconds)

    def _dispatch(self, req: Request) -> None:
        started = perf_counter()
        kind = req.kind
        export = self.export
        assert export is not None
        if kind is Command.READ:
            try:
                queue_read(
                    self.proto, self._out, self.server.pool, export, req, self._sendfile_fd, self._readinto
                )
            except OSError as exc:
                self._out.append(self.proto.reply_error(req.cookie, wire_errno(exc.errno), str(exc)))
            self._count(req, started)
        elif kind is Command.BLOCK_STATUS:
            try:
                extents = export.extents(req.offset, req.length)
            except OSError as exc:
                reply = self.proto.reply_error(req.cookie, wire_errno(exc.errno), str(exc))
            else:
                one = bool(req.flags & c.CMD_FLAG_REQ_ONE)
                merged = merge_extents(extents, req.length, req_one=one)
                reply = self.proto.reply_block_status(req.cookie, merged)
            self._out.append(reply)
            self._count(req, started)
        elif kind is Command.CACHE:
            self._out.append(self.proto.reply_ok(req.cookie))
            self._count(req, started)
        else:
            work = execute(self.proto, export, req, self._label())
            result: bytes | asyncio.Task[bytes] | EagerRun
            if self._eager:
                done, result = run_eagerly(work, self.loop, partial(self._on_ended, req, started))
            else:
                done, result = False, self.loop.create_task(work)
            if done:
                assert isinstance(result, bytes)
                self._release_payload(req)
                self._out.append(result)
                self._count(req, started)
                return
            assert isinstance(result, asyncio.Task | EagerRun)
            self._in_flight += 1
            self._in_flight_bytes += req.length if kind is Command.WRITE else 0
            self._tasks.add(result)
            if isinstance(result, asyncio.Task):
                result.add_done_callback(partial(self._on_done, req, started))
            self._update_reading()

    def _release_payload(self, req: Request) -> None:
        payload = req.payload
        if isinstance(payload, memoryview):
            req.payload = None
            self.server.pool.put(payload)

    def _on_done(self, req: Request, started: float, task: asyncio.Task[bytes]) -> None:
        if task.cancelled():
            self._ended(req, started, task, None, asyncio.CancelledError())
        else:
            self._ended(req, started, task, task.result(), None)

    def _on_ended(
        self, req: Request, started: float, run: EagerRun, reply: bytes | None, exc: BaseException | None
    ) -> None:
        """The end of an EagerRun (eager.py), in the callback that ended it."""
        self._ended(req, started, run, reply, exc)

    def _ended(
        self, req: Request, started: float, work: asyncio.Task[bytes] | EagerRun | None,
        reply: bytes | None, exc: BaseException | None,
    ) -> None:  # fmt: skip
        if work is not None:
            self._tasks.discard(work)
        self._in_flight -= 1
        self._in_flight_bytes -= req.length if req.kind is Command.WRITE else 0
        if isinstance(exc, asyncio.CancelledError):
            # A thread may still be copying from the payload: never recycle it.
            return
        self._release_payload(req)
        if self._closed:
            return
        if exc is not None or reply is None:  # execute() answers every error: a bug
            log.error("nbd %s on export %s failed", req.kind.name, self._label(), exc_info=exc)
            reply = self.proto.reply_error(req.cookie, Errno.EIO, "internal error")
        self._out.append(reply)
        self._count(req, started)
        if not self._resume_scheduled:
            self._resume_scheduled = True
            self.loop.call_soon(self._after_completions)

    def _after_completions(self) -> None:
        self._resume_scheduled = False
        if self._closed:
            return
        try:
            self._flush()
            if self._closing and not self._in_flight and not self._out and not self._tls_waiting():
                self.abort()
        except OSError as exc:
            log.info("nbd connection to export %s dropped: %s", self._label(), exc)
            self.abort()

    # -- transmission: output and flow control ---------------------------

    def _flush(self) -> None:
        out, tls = self._out, self.tls
        out.flush(self.io, tls.gather_bytes if tls is not None else 0)
        if tls is not None:
            tls.flush()
        waiting = bool(out) or (tls is not None and tls.wants_write)
        if waiting and not self._writing:
            self.loop.add_writer(self.fd, self._on_writable)
            self._writing = True
        elif not waiting and self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        self._update_reading()

    def _on_writable(self) -> None:
        try:
            self._flush()
        except OSError as exc:
            log.info("nbd connection to export %s dropped: %s", self._label(), exc)
            self.abort()
            return
        if self._closing and not self._out and not self._in_flight and not self._tls_waiting():
            self.abort()

    def _tls_waiting(self) -> bool:
        return self.tls is not None and self.tls.wants_write

    def _update_reading(self) -> None:
        server = self.server
        want = (
            not self._closing
            and self._in_flight < server.max_in_flight
            and self._in_flight_bytes < server.max_in_flight_bytes
            and len(self._out) < server.max_output_bytes
        )
        if want and not self._reading:
            self.loop.add_reader(self.fd, self._on_readable)
            self._reading = True
            # Requests may already sit in the buffer: the client may be waiting for us.
            self.loop.call_soon(self._on_resumed)
        elif not want and self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False

    def _on_resumed(self) -> None:
        if self._closed or not self._reading:
            return
        try:
            self._process()
            if self.tls is not None and self.tls.has_buffered and self._reading:
                self._on_readable()  # bytes wait in the TLS buffers: the fd will not say so
                return
            self._flush()
        except (ProtocolError, OSError) as exc:
            log.info("nbd connection to export %s dropped: %s", self._label(), exc)
            self.abort()

    def _begin_close(self) -> None:
        """Soft disconnect: finish in-flight requests, send their replies, then close."""
        self._closing = True
        self._update_reading()
        if not self._in_flight:
            self.loop.call_soon(self._after_completions)

    def abort(self) -> None:
        """Hard disconnect now; in-flight requests are cancelled.

        The socket itself is closed by `run()` once it unwinds, so no pending
        socket call of the handshake is left on a closed descriptor.
        """
        if self._closed:
            return
        self._closed = True
        if self._handshaking and self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            return
        if self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        for task in list(self._tasks):
            task.cancel()
        self._out.clear()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if not self._done.done():
            self._done.set_result(None)
