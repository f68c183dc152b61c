"""TLS over the non-blocking socket of an NBD connection, after NBD_OPT_STARTTLS.

The NBD server and client drive their sockets with `add_reader`/`add_writer`
callbacks, `recv_into` and `sendmsg`; asyncio's own TLS transport does not
fit that, so `TlsStream` runs an `ssl.SSLObject` over memory BIOs on the
same socket and offers the socket methods those layers use (`recv_into`,
`send`, `sendmsg`, `fileno`), with non-blocking semantics: BlockingIOError
when nothing can move now. The handshake (`TlsStream.start`) and the
option haggling that follows use the coroutines `recv_into_async` and
`sendall_async`.

Rules this module keeps:
- `recv_into` fills as much of the buffer as the socket and the TLS
  buffers hold, so a short read means every buffer is drained; what waits
  in memory instead of in the kernel (`has_buffered`) is invisible to
  readability, and a caller that stops reading for backpressure must come
  back for it by itself.
- Ciphertext the kernel did not take waits here, bounded: past
  MAX_PENDING_BYTES `send`/`sendmsg` accept nothing (BlockingIOError), and
  `wants_write` keeps the caller's writer armed until it is drained.
- Never sendfile: bytes must be encrypted, so callers send file data from
  memory on a TLS connection.
- A failed handshake raises ssl.SSLError (an OSError) after a best-effort
  send of the alert; a peer that closes mid-handshake raises
  ConnectionResetError. Neither leaves anything behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable

Buffer = bytes | bytearray | memoryview

RECV_CHUNK_BYTES = 256 * 1024
SEND_CHUNK_BYTES = 256 * 1024  # plaintext encrypted per send() call
MAX_PENDING_BYTES = 1024 * 1024


class TlsStream:
    """One TLS session on a connected non-blocking socket (make it with `start`)."""

    def __init__(
        self, sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ):
        self._sock = sock
        self._obj = obj
        self._in = incoming
        self._out = outgoing
        self._pending = bytearray()  # ciphertext the kernel has not taken yet
        self._eof = False
        self._rbuf = bytearray(RECV_CHUNK_BYTES)

    @classmethod
    async def start(
        cls,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> TlsStream:
        """Run the TLS handshake on `sock` (already past STARTTLS's ACK)."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_hostname)
        loop = asyncio.get_running_loop()
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                with contextlib.suppress(OSError):  # the alert tells the peer why
                    sock.send(outgoing.read())
                raise
            data = outgoing.read()
            if data:
                await loop.sock_sendall(sock, data)
            received = await loop.sock_recv(sock, RECV_CHUNK_BYTES)
            if not received:
                raise ConnectionResetError("the peer closed the connection during the TLS handshake")
            incoming.write(received)
        stream = cls(sock, obj, incoming, outgoing)
        await stream._drain_async()
        return stream

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """For `security.tls.require_peer` and `peer_identity`."""
        return self._obj

    @property
    def has_buffered(self) -> bool:
        """Received bytes wait in memory (decrypted or not): read again even if the fd is quiet."""
        return self._obj.pending() > 0 or self._in.pending > 0

    @property
    def wants_write(self) -> bool:
        return bool(self._pending) or self._out.pending > 0

    gather_bytes = SEND_CHUNK_BYTES  # for SendQueue.flush: what one sendmsg takes at most

    def fileno(self) -> int:
        return self._sock.fileno()

    # -- non-blocking, for the callback-driven phases ------------------------

    def recv_into(self, buffer: Buffer) -> int:
        """Decrypted bytes into `buffer`; 0 at the end of the stream; BlockingIOError if none yet."""
        view = memoryview(buffer).cast("B")
        size, n = len(view), 0
        drained = False  # the socket gave less than asked: asking again now would find nothing
        while n < size and not self._eof:
            if self._in.pending or self._obj.pending() or self._in.eof:
                try:
                    got: int = self._obj.read(size - n, view[n:])  # type: ignore[assignment]  # int with a buffer
                except ssl.SSLWantReadError:
                    got = -1  # a partial record: more ciphertext needed
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    got = 0
                if got == 0:
                    self._eof = True
                    break
                if got > 0:
                    n += got
                    continue
            if drained and n:
                break
            try:
                got = self._sock.recv_into(self._rbuf)
            except (BlockingIOError, InterruptedError):
                if n:
                    break
                raise
            if got:
                self._in.write(memoryview(self._rbuf)[:got])
                drained = got < len(self._rbuf)
            else:
                self._in.write_eof()
        self._flush_pending()  # reading may have produced output (a key update's answer)
        return n

    def send(self, data: Buffer) -> int:
        return self.sendmsg([data])

    def sendmsg(self, buffers: Iterable[Buffer], _ancdata: object = (), _flags: int = 0) -> int:
        """Encrypt up to SEND_CHUNK_BYTES of `buffers`; how many plaintext bytes were taken."""
        self._flush_pending()
        if len(self._pending) >= MAX_PENDING_BYTES:
            raise BlockingIOError("TLS output is backed up")
        parts: list[memoryview] = []
        taken = 0
        for buf in buffers:
            part = memoryview(buf).cast("B")[: SEND_CHUNK_BYTES - taken]
            if part:
                parts.append(part)
                taken += len(part)
            if taken >= SEND_CHUNK_BYTES:
                break
        if not parts:
            return 0
        # One write: small replies share TLS records instead of each costing one.
        self._obj.write(parts[0] if len(parts) == 1 else b"".join(parts))
        self._pending += self._out.read()
        self._flush_pending()
        return taken

    def flush(self) -> None:
        """Push waiting ciphertext into the socket (as far as it takes it now)."""
        self._flush_pending()

    def _flush_pending(self) -> None:
        if self._out.pending:
            self._pending += self._out.read()
        while self._pending:
            try:
                sent = self._sock.send(self._pending)
            except (BlockingIOError, InterruptedError):
                return
            del self._pending[:sent]

    def close_notify(self) -> None:
        """Best effort: tell the peer the session ends (before the socket is closed)."""
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            with contextlib.suppress(ssl.SSLWantReadError):
                self._obj.unwrap()
            self._flush_pending()

    # -- coroutines, for the handshake phases --------------------------------

    async def recv_into_async(self, buffer: Buffer) -> int:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return self.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                pass
            await self._drain_async()
            data = await loop.sock_recv(self._sock, RECV_CHUNK_BYTES)
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()

    async def sendall_async(self, data: Buffer) -> None:
        self._obj.write(data)
        await self._drain_async()

    async def _drain_async(self) -> None:
        if self._out.pending:
            self._pending += self._out.read()
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            await asyncio.get_running_loop().sock_sendall(self._sock, data)
