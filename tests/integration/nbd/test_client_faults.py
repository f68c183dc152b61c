"""Our NbdClient against hand-made servers on loopback: refusals, broken replies, drops."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import pytest

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client import NbdClient
from openevs.agent.nbd.constants import Option, Reply
from openevs.agent.nbd.errors import NbdConnectionClosed, NbdError, NbdOptionRefused, RemoteProtocolError
from tests.unit.nbd.server_wire import data_chunk, go_ok, greeting, option_reply, simple

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(script: Script) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that offers nothing but GO (the client asked structured=False)."""
    writer.write(greeting())
    await reader.readexactly(4)  # client flags
    magic, opt, length = struct.unpack(">QII", await reader.readexactly(16))
    assert (magic, opt) == (c.IHAVEOPT, Option.GO)
    await reader.readexactly(length)
    writer.write(go_ok())


async def request(reader: asyncio.StreamReader) -> tuple[int, int, int, int]:
    """(type, cookie, offset, length) of the next request (and its payload read)."""
    _magic, _flags, kind, cookie, offset, length = c.REQUEST_HEADER.unpack(await reader.readexactly(28))
    if kind == c.Command.WRITE:
        await reader.readexactly(length)
    return kind, cookie, offset, length


def run(script: Script, main: Callable[[int], Awaitable[None]]) -> None:
    async def go() -> None:
        server, port = await serve(script)
        async with server:
            await main(port)

    asyncio.run(go())


def test_server_closing_in_the_greeting() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting()[:7])

    async def main(port: int) -> None:
        with pytest.raises(NbdConnectionClosed, match="during the greeting"):
            await NbdClient.connect("127.0.0.1", port, "disk")

    run(script, main)


def test_refused_go_is_option_refused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting())
        await reader.readexactly(4 + 16 + 4 + 4 + 4)  # flags, GO header, name "disk", 1 info
        writer.write(option_reply(Option.GO, Reply.ERR_UNKNOWN, b"no such export"))
        await reader.read()

    async def main(port: int) -> None:
        with pytest.raises(NbdOptionRefused) as info:
            await NbdClient.connect("127.0.0.1", port, "disk", structured=False)
        assert info.value.reply == Reply.ERR_UNKNOWN

    run(script, main)


def test_a_broken_reply_fails_its_request_and_drops_the_rest() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        _kind, flush, _o, _l = await request(reader)
        _kind, read, _o, _l = await request(reader)
        writer.write(simple(flush, c.Errno.EIO))
        # A structured chunk to a client that never asked for them, outside its READ.
        writer.write(data_chunk(read, 1 << 30, b"x" * 16))
        await reader.read()

    async def main(port: int) -> None:
        client = await NbdClient.connect("127.0.0.1", port, "disk", structured=False)
        flush = asyncio.ensure_future(client.flush())
        read = asyncio.ensure_future(client.read(0, 16))
        with pytest.raises(NbdError):
            await flush
        with pytest.raises(RemoteProtocolError, match="outside the request"):
            await read
        with pytest.raises(NbdConnectionClosed):
            await client.read(0, 1)
        await client.close()

    run(script, main)


def test_server_dropping_fails_every_pending_request() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        for _ in range(3):
            await request(reader)

    async def main(port: int) -> None:
        client = await NbdClient.connect("127.0.0.1", port, "disk", structured=False)
        calls = [client.write(0, bytearray(4096)), client.read(0, 512), client.flush()]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, NbdConnectionClosed) for r in results), results
        await client.close()

    run(script, main)


def test_large_reads_arrive_in_pieces() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, written in small slices

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        _kind, cookie, _o, length = await request(reader)
        writer.write(simple(cookie))
        for pos in range(0, length, 100_000):
            writer.write(payload[pos : pos + 100_000])
            await writer.drain()
            await asyncio.sleep(0)
        await request(reader)  # DISC

    async def main(port: int) -> None:
        async with await NbdClient.connect("127.0.0.1", port, "disk", structured=False) as client:
            assert await client.read(0, len(payload)) == payload

    run(script, main)
