"""Clients of the witness: `AsyncWitnessClient` for agents, `WitnessClient` (blocking)
for the controller. Both are thin I/O around protocol.py.

Transport failures and timeouts become `WitnessUnreachable`; a witness
that breaks the protocol is `RemoteProtocolError` (and the connection is
dropped); a `Failure` answer becomes `WitnessFailed`.

With TLS files both clients speak mutual TLS: they present their own
certificate (an agent's, or the controller's), check the witness's against
the CA and the host name, and then that it names a witness (or an agent,
for a witness embedded in one). The context is built per connection, so a
reissued certificate or a new CA bundle is used from the next connection on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import ssl
from collections.abc import Iterable

from openevs.domain.errors import OpenEvsError
from openevs.security import SecurityError
from openevs.security.identity import CertRole
from openevs.security.pki import TlsFiles
from openevs.security.tls import PeerCert, client_context, require_peer_role
from openevs.witness import protocol as p

CONNECT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 3.0
READ_BYTES = 64 * 1024


class WitnessUnreachable(OpenEvsError):
    """The witness cannot be reached now (down, partitioned, too slow)."""


class WitnessFailed(OpenEvsError):
    """The witness answered that it could not do it."""


WITNESS_ROLES = frozenset({CertRole.WITNESS, CertRole.AGENT})


def _check_witness(peer: PeerCert | None, where: str) -> None:
    try:
        if peer is None:
            raise SecurityError("not a TLS connection")
        require_peer_role(peer, WITNESS_ROLES)
    except SecurityError as exc:
        raise WitnessUnreachable(f"witness {where}: {exc.message}") from exc


def units(pairs: Iterable[tuple[str, int]]) -> list[p.Unit]:
    return [p.Unit(key=key, epoch=epoch) for key, epoch in pairs]


def _check(reply: p.Message, kind: type[p.Reply], request_id: int) -> None:
    if isinstance(reply, p.Failure):
        raise WitnessFailed(f"the witness failed: {reply.message}")
    if not isinstance(reply, kind) or reply.id != request_id:
        raise p.RemoteProtocolError(f"expected {kind.__name__} {request_id}, got {reply!r}")


def _context(tls: TlsFiles | None, host: str, port: int) -> ssl.SSLContext | None:
    if tls is None:
        return None
    try:
        return client_context(tls, check_hostname=True)
    except SecurityError as exc:
        raise WitnessUnreachable(f"witness {host}:{port}: cannot use our TLS files: {exc.message}") from exc


class AsyncWitnessClient:
    """One connection to a witness, one request at a time (callers batch units)."""

    def __init__(
        self,
        host: str,
        port: int,
        side: str,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        tls: TlsFiles | None = None,
    ) -> None:
        self.host, self.port, self.side = host, port, side
        self.timeout_s = timeout_s
        self.tls = tls
        self.lease_s = 0.0
        self._conn: p.Connection | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.state is p.State.READY

    async def _connect(self) -> None:
        ctx = _context(self.tls, self.host, self.port)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=ctx, server_hostname=self.host if ctx else None
            )
        if ctx is not None:
            _check_witness(self._writer.get_extra_info("ssl_object"), f"{self.host}:{self.port}")
        self._conn = p.Connection(p.Role.CLIENT)
        self._writer.write(self._conn.send(p.Hello(side=self.side)))
        welcome = await self._receive()
        if not isinstance(welcome, p.Welcome):
            raise p.RemoteProtocolError(f"expected a welcome, got {welcome!r}")
        self.lease_s = welcome.lease_s

    async def _receive(self) -> p.Message:
        assert self._conn is not None and self._reader is not None
        while isinstance(event := self._conn.next_event(), p.NeedData):
            data = await self._reader.read(READ_BYTES)
            self._conn.receive_data(data)
            if not data:
                raise ConnectionError("the witness closed the connection")
        return event

    async def _request(self, message: p.Request, kind: type[p.Reply]) -> p.Message:
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    if not self.connected:
                        await self._connect()
                    assert self._conn is not None and self._writer is not None
                    self._writer.write(self._conn.send(message))
                    await self._writer.drain()
                    reply = await self._receive()
            except (OSError, TimeoutError, p.RemoteProtocolError, WitnessUnreachable) as exc:
                self._drop()
                if isinstance(exc, p.RemoteProtocolError | WitnessUnreachable):
                    raise
                raise WitnessUnreachable(
                    f"witness {self.host}:{self.port} unreachable: {exc or type(exc).__name__}"
                ) from exc
        _check(reply, kind, message.id)
        return reply

    async def acquire(self, unit_list: list[p.Unit], *, force: bool = False) -> list[p.Grant]:
        reply = await self._request(p.Acquire(id=next(self._ids), units=unit_list, force=force), p.Acquired)
        assert isinstance(reply, p.Acquired)
        return reply.grants

    async def release(self, unit_list: list[p.Unit]) -> None:
        await self._request(p.Release(id=next(self._ids), units=unit_list), p.Released)

    async def status(self, keys: list[str], sides: list[str] | None = None) -> p.StatusReply:
        reply = await self._request(p.Status(id=next(self._ids), keys=keys, sides=sides or []), p.StatusReply)
        assert isinstance(reply, p.StatusReply)
        return reply

    async def ping(self) -> None:
        await self._request(p.Ping(id=next(self._ids)), p.Pong)

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._conn = self._reader = self._writer = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._conn = self._reader = self._writer = None


class WitnessClient:
    """Blocking client: one connection per call (the controller asks rarely)."""

    def __init__(
        self,
        host: str,
        port: int,
        side: str,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        tls: TlsFiles | None = None,
    ) -> None:
        self.host, self.port, self.side = host, port, side
        self.timeout_s = timeout_s
        self.tls = tls
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"WitnessClient({self.host}:{self.port} as {self.side})"

    def _exchange(self, message: p.Request, kind: type[p.Reply]) -> p.Message:
        conn = p.Connection(p.Role.CLIENT)
        ctx = _context(self.tls, self.host, self.port)
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as plain:
                sock = plain if ctx is None else ctx.wrap_socket(plain, server_hostname=self.host)
                if isinstance(sock, ssl.SSLSocket):
                    _check_witness(sock, f"{self.host}:{self.port}")
                sock.settimeout(self.timeout_s)
                sock.sendall(conn.send(p.Hello(side=self.side)))
                welcome = self._receive(conn, sock)
                if not isinstance(welcome, p.Welcome):
                    raise p.RemoteProtocolError(f"expected a welcome, got {welcome!r}")
                sock.sendall(conn.send(message))
                reply = self._receive(conn, sock)
        except OSError as exc:
            raise WitnessUnreachable(
                f"witness {self.host}:{self.port} unreachable: {exc or type(exc).__name__}"
            ) from exc
        _check(reply, kind, message.id)
        return reply

    @staticmethod
    def _receive(conn: p.Connection, sock: socket.socket) -> p.Message:
        while isinstance(event := conn.next_event(), p.NeedData):
            data = sock.recv(READ_BYTES)
            conn.receive_data(data)
            if not data:
                raise ConnectionError("the witness closed the connection")
        return event

    def acquire(self, unit_list: list[p.Unit], *, force: bool = False) -> list[p.Grant]:
        reply = self._exchange(p.Acquire(id=next(self._ids), units=unit_list, force=force), p.Acquired)
        assert isinstance(reply, p.Acquired)
        return reply.grants

    def release(self, unit_list: list[p.Unit]) -> None:
        self._exchange(p.Release(id=next(self._ids), units=unit_list), p.Released)

    def status(self, keys: list[str], sides: list[str] | None = None) -> p.StatusReply:
        reply = self._exchange(p.Status(id=next(self._ids), keys=keys, sides=sides or []), p.StatusReply)
        assert isinstance(reply, p.StatusReply)
        return reply

    def ping(self) -> None:
        self._exchange(p.Ping(id=next(self._ids)), p.Pong)
