"""Clients of the witness: `AsyncWitnessClient` for agents, `WitnessClient` (blocking)
for the controller. Both are thin I/O around protocol.py.

Transport failures and timeouts become `WitnessUnreachable`; a witness
that breaks the protocol is `RemoteProtocolError` (and the connection is
dropped); a `Failure` answer becomes `WitnessFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Iterable

from openevs.domain.errors import OpenEvsError
from openevs.witness import protocol as p

CONNECT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 3.0
READ_BYTES = 64 * 1024


class WitnessUnreachable(OpenEvsError):
    """The witness cannot be reached now (down, partitioned, too slow)."""


class WitnessFailed(OpenEvsError):
    """The witness answered that it could not do it."""


def units(pairs: Iterable[tuple[str, int]]) -> list[p.Unit]:
    return [p.Unit(key=key, epoch=epoch) for key, epoch in pairs]


def _check(reply: p.Message, kind: type[p.Reply], request_id: int) -> None:
    if isinstance(reply, p.Failure):
        raise WitnessFailed(f"the witness failed: {reply.message}")
    if not isinstance(reply, kind) or reply.id != request_id:
        raise p.RemoteProtocolError(f"expected {kind.__name__} {request_id}, got {reply!r}")


class AsyncWitnessClient:
    """One connection to a witness, one request at a time (callers batch units)."""

    def __init__(self, host: str, port: int, side: str, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.host, self.port, self.side = host, port, side
        self.timeout_s = timeout_s
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
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
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
            except (OSError, TimeoutError, p.RemoteProtocolError) as exc:
                self._drop()
                if isinstance(exc, p.RemoteProtocolError):
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

    def __init__(self, host: str, port: int, side: str, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.host, self.port, self.side = host, port, side
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"WitnessClient({self.host}:{self.port} as {self.side})"

    def _exchange(self, message: p.Request, kind: type[p.Reply]) -> p.Message:
        conn = p.Connection(p.Role.CLIENT)
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as sock:
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
