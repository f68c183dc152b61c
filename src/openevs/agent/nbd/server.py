"""Asyncio NBD server: listens, resolves export names, tracks and drops connections.

Per-connection work (handshake, transmission, flow control) is in
`connection.py`; the protocol itself in the sans-IO `protocol.py`.
Export names are per-attachment secrets: they are never listed, and
`drop_export(name)` closes every connection that uses one (revocation,
deletion).

TLS: with an `ssl.SSLContext` the server offers NBD_OPT_STARTTLS, under
`tls_policy` (default REQUIRED: no option but STARTTLS and ABORT is
answered in clear text, handshake.py). The resolver is told who the client
is: the identity of the certificate the TLS handshake verified, or None
(no TLS, or a client without a certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from openevs.security.identity import Identity

from ..resources import SHORTAGE_LOG, shortage_of
from .buffers import BufferPool
from .connection import Connection
from .export import Export
from .handshake import TlsPolicy
from .owner import LinkHandler, wire_errno
from .stats import NbdStats

__all__ = ["NbdServer", "Resolver", "TlsPolicy", "wire_errno"]

log = logging.getLogger(__name__)

ACCEPT_BACKOFF_S = 0.1

Resolver = Callable[[str, Identity | None], Awaitable[Export | None]]
# export name -> the volume whose own counters it also bumps (None: only the server's)
VolumeOf = Callable[[str], str | None]


class NbdServer:
    """Serves exports found by `resolver(name)` on `host:port` (port 0: any free one)."""

    def __init__(
        self,
        resolver: Resolver,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_in_flight: int = 64,
        max_in_flight_bytes: int = 256 * 1024 * 1024,
        max_output_bytes: int = 64 * 1024 * 1024,
        handshake_timeout_s: float = 30.0,
        tls: ssl.SSLContext | None = None,
        tls_policy: TlsPolicy | None = None,
        counted_volume: VolumeOf = lambda _name: None,
        link_handler: LinkHandler | None = None,
    ) -> None:
        if tls is None and tls_policy not in (None, TlsPolicy.OFF):
            raise ValueError(f"TLS policy {tls_policy} needs an SSL context")
        self._resolver = resolver
        self.tls_context = tls
        self.tls_policy = tls_policy or (TlsPolicy.REQUIRED if tls is not None else TlsPolicy.OFF)
        self._counted_volume = counted_volume
        self.stats = NbdStats()
        self.volume_stats: dict[str, NbdStats] = {}  # opted-in volumes only
        self.host = host
        self.port = port
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self.max_output_bytes = max_output_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self.link_handler = link_handler
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_name: dict[str, set[Connection]] = {}
        self._connections: set[Connection] = set()
        self._drop_epoch = 0
        self.pool = BufferPool()

    async def start(self) -> None:
        infos = await asyncio.get_running_loop().getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _type, proto, _name, addr = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(addr)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_task = asyncio.create_task(self._accept_loop(listener))

    async def close(self) -> None:
        """Stop listening, drop every connection and wait for them to end."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.drop_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_export(self, name: str) -> int:
        """Close every connection to export `name` (revocation, deletion); returns the count."""
        self._drop_epoch += 1
        victims = list(self._by_name.get(name, ()))
        for conn in victims:
            conn.abort()
        return len(victims)

    def drop_all(self) -> None:
        self._drop_epoch += 1
        for conn in list(self._connections):
            conn.abort()

    def connection_count(self, name: str | None = None) -> int:
        if name is None:
            return len(self._connections)
        return len(self._by_name.get(name, ()))

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _peer = await loop.sock_accept(listener)
            except OSError as exc:
                what = shortage_of(exc)
                if what is None:
                    log.warning("nbd accept failed: %s", exc)
                    continue
                SHORTAGE_LOG.report(what, "NBD accept", exc)
                await asyncio.sleep(ACCEPT_BACKOFF_S)  # no busy loop while it lasts
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _keepalive(sock)
            conn = Connection(self, sock)
            self._connections.add(conn)
            task = conn.task = asyncio.create_task(conn.run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- what its connections call (connection.Owner) ---------------------

    async def resolve(self, name: str, peer: Identity | None) -> Export | None:
        while True:
            epoch = self._drop_epoch
            export = await self._resolver(name, peer)
            if epoch == self._drop_epoch:
                return export  # no revocation raced with the lookup

    def stats_for(self, name: str) -> list[NbdStats]:
        volume_id = self._counted_volume(name)
        if volume_id is None:
            return [self.stats]
        return [self.stats, self.volume_stats.setdefault(volume_id, NbdStats())]

    def register(self, conn: Connection, name: str) -> None:
        self._by_name.setdefault(name, set()).add(conn)

    def forget(self, conn: Connection) -> None:
        self._connections.discard(conn)
        if conn.name is not None:
            peers = self._by_name.get(conn.name)
            if peers is not None:
                peers.discard(conn)
                if not peers:
                    del self._by_name[conn.name]


# A client that went silent (a black-holed network: no FIN, no RST) is dropped after
# about idle + count * interval seconds, so a secondary learns its primary's link is
# gone (its link connections close) and the automatic failover can see it.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 2, 1, 3


def _keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    # Unacknowledged data counts too: the same bound while the server has replies in flight.
    user_timeout_ms = (KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT) * 1000
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
