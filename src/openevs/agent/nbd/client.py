"""Asyncio NBD client: the agent's own (replication to the peer AZ) and the tests'.

The protocol is the sans-IO `client_protocol.ClientConnection`; this module
only moves its bytes. It owns a non-blocking socket: the handshake runs as
a coroutine (`sock_recv_into`/`sock_sendall`), then replies are received by
an `add_reader` callback straight into the core's buffers (a READ's data
into its result) and requests leave through a `SendQueue` with one
`sendmsg` per wake-up, payloads queued by reference, never copied. What the
socket does not take at once waits for `add_writer` (the kernel's send
buffer is the backpressure; it is made large enough for a 4 MiB write).

TLS: `connect(..., tls=context)` asks NBD_OPT_STARTTLS first and goes on only
over TLS (tls_stream.py); a refusal raises `NbdOptionRefused`, a rejected
certificate `ssl.SSLError`; `ssl_object` is for `require_peer`.

Pipelined: any number of tasks may call it at once; replies are matched to
requests by cookie, in whatever order the server sends them. Error replies
raise `NbdError(errno)`; a dropped connection fails every pending and later
call with `NbdConnectionClosed`; a server that breaks the protocol is
reported as `RemoteProtocolError` (and the connection is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from . import constants as c
from .buffers import BufferPool, SendQueue
from .client_events import NEED_DATA, ExportEntered, OptionRefused, RequestDone, RequestFailed, TlsAccepted
from .client_protocol import ClientConnection
from .constants import Command
from .errors import NbdConnectionClosed, NbdError, NbdOptionRefused, RemoteProtocolError
from .tls_stream import TlsStream

SEND_BUFFER_BYTES = 4 * 1024 * 1024

Payload = bytes | bytearray | memoryview


class NbdClient:
    """One NBD connection to one export (make it with `connect`)."""

    def __init__(self, sock: socket.socket, core: ClientConnection) -> None:
        self._sock: socket.socket | None = sock
        self._io: socket.socket | TlsStream = sock
        self._tls: TlsStream | None = None
        self._fd = sock.fileno()
        self._core = core
        self._loop = asyncio.get_running_loop()
        self._futures: dict[int, asyncio.Future[object]] = {}
        self._out = SendQueue(BufferPool(0))
        self._closed: BaseException | None = None
        self._reading = False
        self._sending = False
        self._sent: asyncio.Future[None] | None = None  # close() waits for its DISC here
        self.size_bytes = 0
        self.flags = 0
        self.structured = False
        self.meta_context_id: int | None = None
        self.block_size = (c.MIN_BLOCK_SIZE, c.PREFERRED_BLOCK_SIZE, c.MAX_PAYLOAD)

    @property
    def read_only(self) -> bool:  # the server exports it read-only
        return bool(self.flags & c.FLAG_READ_ONLY)

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS session (None without TLS), for `security.tls.require_peer`."""
        return self._tls.ssl_object if self._tls is not None else None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        export_name: str,
        *,
        structured: bool = True,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> NbdClient:
        """Open a connection and enter transmission on `export_name`.

        With `tls`, the session is upgraded by NBD_OPT_STARTTLS first;
        `server_hostname` (default: `host`) is what the server's certificate
        must name when the context checks host names."""
        sock = await _open_socket(host, port)
        try:
            client = cls(sock, ClientConnection(export_name, structured=structured, tls=tls is not None))
            await client._handshake(tls, server_hostname or host)
        except BaseException:
            sock.close()
            raise
        client._start_transmission()
        return client

    async def __aenter__(self) -> NbdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- handshake --------------------------------------------------------

    async def _handshake(self, tls: ssl.SSLContext | None, server_hostname: str) -> None:
        core, sock, loop = self._core, self._sock, self._loop
        assert sock is not None
        while True:
            event = core.next_event()
            if event is NEED_DATA:
                data = core.data_to_send()
                if self._tls is not None:
                    if data:
                        await self._tls.sendall_async(data)
                    n = await self._tls.recv_into_async(core.get_buffer())
                else:
                    if data:
                        await loop.sock_sendall(sock, data)
                    n = await loop.sock_recv_into(sock, core.get_buffer())
                if n == 0:
                    raise NbdConnectionClosed(f"server closed during {core.waiting_for}")
                core.buffer_updated(n)
            elif isinstance(event, TlsAccepted):
                assert tls is not None
                hostname = server_hostname if tls.check_hostname else None
                self._tls = await TlsStream.start(sock, tls, server_side=False, server_hostname=hostname)
                self._io = self._tls
                core.tls_started()
            elif isinstance(event, OptionRefused):
                raise NbdOptionRefused(event.option, event.reply, event.message)
            elif isinstance(event, ExportEntered):
                self.size_bytes, self.flags = event.size_bytes, event.flags
                self.structured, self.meta_context_id = event.structured, event.meta_context_id
                self.block_size = event.block_size
                return

    def _start_transmission(self) -> None:
        sock = self._sock
        assert sock is not None
        with contextlib.suppress(OSError):  # a 4 MiB payload fits in one sendmsg
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        self._loop.add_reader(self._fd, self._on_readable)
        self._reading = True
        self._deliver_or_drop()  # the server may have sent more than the handshake
        if self._tls is not None and self._tls.has_buffered:
            self._loop.call_soon(self._on_readable)  # held by TLS, where the fd does not show it

    # -- requests ---------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        result = await self._request(Command.READ, offset, length)
        assert isinstance(result, bytes)
        return result

    async def write(self, offset: int, data: Payload, fua: bool = False) -> None:
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

    def start_write(self, offset: int, data: Payload, fua: bool = False) -> asyncio.Future[object]:
        """Send a WRITE now (no task, no await); the future of its reply.

        `data` is sent from where it is: keep it unchanged until the future is
        done (a cancelled future copies what is still queued of it)."""
        if self._closed is not None:
            raise NbdConnectionClosed("connection is closed") from self._closed
        future = self._submit(Command.WRITE, offset, len(data), c.CMD_FLAG_FUA if fua else 0, data)
        if not isinstance(data, bytes):

            def unshare(f: asyncio.Future[object]) -> None:
                if f.cancelled():
                    self._out.unshare(data)

            future.add_done_callback(unshare)
        return future

    async def _request(
        self, kind: int, offset: int, length: int, flags: int = 0, payload: Payload | None = None
    ) -> object:
        if self._closed is not None:
            raise NbdConnectionClosed("connection is closed") from self._closed
        future = self._submit(kind, offset, length, flags, payload)
        try:
            return await future
        except asyncio.CancelledError:
            if payload is not None:
                self._out.unshare(payload)  # the caller may reuse it now
            raise

    def _submit(
        self, kind: int, offset: int, length: int, flags: int, payload: Payload | None
    ) -> asyncio.Future[object]:
        """Queue a request and send what the socket takes now; the future of its reply."""
        cookie, header = self._core.request(kind, offset, length, flags)
        future: asyncio.Future[object] = self._loop.create_future()
        self._futures[cookie] = future
        out = self._out
        out.append(header)
        if payload is not None:
            out.append(payload)
        if not self._sending:
            self._push()
        return future

    # -- socket -----------------------------------------------------------

    def _push(self) -> None:
        """Send what the socket takes; wait for writability while anything is left."""
        out, tls = self._out, self._tls
        if self._sock is None:
            return
        try:
            out.flush(self._io, tls.gather_bytes if tls is not None else 0)
            if tls is not None:
                tls.flush()
        except OSError as exc:
            self._fail_all(exc)
            return
        waiting = bool(out) or (tls is not None and tls.wants_write)
        if waiting and not self._sending:
            self._loop.add_writer(self._fd, self._push)
            self._sending = True
        elif not waiting:
            if self._sending:
                self._loop.remove_writer(self._fd)
                self._sending = False
            self._wake_sent()

    def _on_readable(self) -> None:
        core, io = self._core, self._io
        if self._sock is None:
            return
        try:
            while True:
                buf = core.get_buffer()
                size = len(buf)
                try:
                    n = io.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    return
                finally:
                    del buf
                if n == 0:
                    self._fail_all(NbdConnectionClosed("server closed the connection"))
                    return
                core.buffer_updated(n)
                self._deliver()
                if n < size and not core.awaiting_payload:
                    return  # drained; but a READ's data usually follows its header closely
        except RemoteProtocolError as exc:
            self._broken(exc)
        except OSError as exc:
            self._fail_all(exc)

    def _deliver(self) -> None:
        """Answer the futures of every reply the core has completed."""
        core, futures = self._core, self._futures
        while True:
            event = core.next_event()
            if event is NEED_DATA:
                return
            if type(event) is RequestDone:
                future = futures.pop(event.cookie, None)
                if future is not None and not future.done():
                    future.set_result(event.result)
            elif type(event) is RequestFailed:
                future = futures.pop(event.cookie, None)
                if future is not None and not future.done():
                    future.set_exception(NbdError(event.errno, event.message))

    def _deliver_or_drop(self) -> None:
        try:
            self._deliver()
        except RemoteProtocolError as exc:
            self._broken(exc)

    def _broken(self, exc: RemoteProtocolError) -> None:
        """The server broke the protocol: the request it broke it on learns why."""
        cookie = self._core.error_cookie
        future = self._futures.pop(cookie, None) if cookie is not None else None
        if future is not None and not future.done():
            future.set_exception(exc)
        self._fail_all(exc)

    def _wake_sent(self) -> None:
        sent, self._sent = self._sent, None
        if sent is not None and not sent.done():
            sent.set_result(None)

    def _detach_socket(self) -> None:
        sock, self._sock = self._sock, None
        self._out.clear()
        self._wake_sent()
        if sock is None:
            return
        with contextlib.suppress(Exception):  # the loop may be closed already
            if self._reading:
                self._loop.remove_reader(self._fd)
            if self._sending:
                self._loop.remove_writer(self._fd)
        self._reading = self._sending = False
        sock.close()

    def _fail_all(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        self._detach_socket()
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                error = NbdConnectionClosed(f"connection lost: {exc!r}")
                error.__cause__ = exc
                future.set_exception(error)

    # -- ending -----------------------------------------------------------

    def abort(self, reason: str = "connection aborted") -> None:
        """Drop the connection now: pending requests fail, no DISC, no waiting."""
        self._fail_all(NbdConnectionClosed(reason))

    async def close(self) -> None:
        """Wait for in-flight requests, send NBD_CMD_DISC and close."""
        if self._futures:
            await asyncio.gather(*list(self._futures.values()), return_exceptions=True)
        if self._closed is None:
            self._closed = NbdConnectionClosed("closed by the client")
            self._out.append(self._core.disconnect())
            self._push()
            if self._out or (self._tls is not None and self._tls.wants_write):
                self._sent = self._loop.create_future()
                await self._sent
            if self._tls is not None:
                self._tls.close_notify()
        self._detach_socket()


async def _open_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket (TCP_NODELAY) to the first address that answers."""
    loop = asyncio.get_running_loop()
    try:  # a numeric address needs no resolver thread
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _name, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error or OSError(f"no address for {host}:{port}")
