"""Server behaviour beyond the happy path: exports without the optional extras,
sizes that change, backpressure, timeouts, violations, aborts and shutdown."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client import NbdClient
from openevs.agent.nbd.constants import Option, Reply
from openevs.agent.nbd.errors import NbdConnectionClosed
from openevs.agent.nbd.export import MemoryExport
from tests.support.waiting import wait_for

from .conftest import ServerThread

MIB = 1 << 20


def test_memory_export_without_readinto_or_fileno(nbd_server: ServerThread) -> None:
    nbd_server.exports["mem"] = MemoryExport(8 * MIB)

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, "mem") as client:
            data = bytes(range(256)) * 1024  # 256 KiB: a pooled-size read and write
            await client.write(MIB, data)
            assert await client.read(MIB, len(data)) == data
            assert await client.read(0, 2 * MIB) == bytes(MIB) + data + bytes(MIB - len(data))
            assert (await client.block_status(0, 2 * MIB))[0] == (MIB, 3)

    asyncio.run(main())


def test_open_connection_sees_a_grown_export(nbd_server: ServerThread) -> None:
    export = MemoryExport(MIB)
    nbd_server.exports["grow"] = export

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, "grow") as client:
            nbd_server.call(export.resize, 2 * MIB)
            await client.write(MIB, b"beyond the old end")
            assert await client.read(MIB, 18) == b"beyond the old end"

    asyncio.run(main())


class TaskOnlyExport(MemoryExport):
    """Needs a current task from its first line, so must not be run eagerly."""

    eager_writes = False

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        async with asyncio.timeout(5):
            await super().write(offset, data, fua)


def test_exports_without_eager_writes_run_in_tasks(nbd_server: ServerThread) -> None:
    nbd_server.exports["tasks"] = TaskOnlyExport(MIB)

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, "tasks") as client:
            await client.write(0, b"in a task")
            assert await client.read(0, 9) == b"in a task"

    asyncio.run(main())


class GatedExport(MemoryExport):
    """Writes wait for a gate; counts how many are inside at once."""

    def __init__(self) -> None:
        super().__init__(MIB)
        self.gate = asyncio.Event()
        self.inside = 0
        self.max_inside = 0

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        self.inside += 1
        self.max_inside = max(self.max_inside, self.inside)
        await self.gate.wait()
        await super().write(offset, data, fua)
        self.inside -= 1


def test_in_flight_requests_are_bounded(nbd_server: ServerThread) -> None:
    export = GatedExport()
    nbd_server.exports["gated"] = export
    nbd_server.server.max_in_flight = 2

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, "gated") as client:
            writes = [asyncio.ensure_future(client.write(i * 4096, b"x" * 4096)) for i in range(10)]
            await asyncio.sleep(0)  # a scheduling point: lets the requests go out
            wait_for("two requests inside", lambda: nbd_server.call(lambda: export.inside) == 2, 10)
            nbd_server.call(export.gate.set)
            await asyncio.gather(*writes)
        assert export.max_inside == 2
        assert export.pread(0, 10 * 4096) == b"x" * 10 * 4096

    asyncio.run(main())


def raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    greeting = recv_exactly(sock, 18)
    assert struct.unpack(">QQH", greeting)[:2] == (c.NBDMAGIC, c.IHAVEOPT)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_idle_handshake_times_out(nbd_server: ServerThread) -> None:
    nbd_server.server.handshake_timeout_s = 0.2
    with raw_connect(nbd_server.port) as sock:
        assert sock.recv(1) == b""  # closed by the server, within the socket timeout


def test_abort_during_handshake(nbd_server: ServerThread) -> None:
    with raw_connect(nbd_server.port) as sock:
        sock.sendall(struct.pack(">I", 3) + struct.pack(">QII", c.IHAVEOPT, Option.ABORT, 0))
        reply = recv_exactly(sock, 20)
        assert struct.unpack(">QIII", reply)[1:] == (Option.ABORT, Reply.ACK, 0)
        assert sock.recv(1) == b""


def test_unknown_client_flags_close_the_connection(nbd_server: ServerThread) -> None:
    with raw_connect(nbd_server.port) as sock:
        sock.sendall(struct.pack(">I", 0x80))
        assert sock.recv(1) == b""


def test_protocol_violation_in_transmission_drops_the_connection(
    nbd_server: ServerThread,
) -> None:
    nbd_server.exports["mem"] = MemoryExport(MIB)

    async def main() -> None:
        client = await NbdClient.connect("127.0.0.1", nbd_server.port, "mem")
        pending = asyncio.ensure_future(client.read(0, 512))
        await asyncio.sleep(0)
        sock = client._sock
        assert sock is not None
        sock.send(b"\xde\xad" * 14)  # a request with a bad magic
        await pending  # the read was answered before the garbage was parsed
        with pytest.raises(NbdConnectionClosed):
            await client.read(0, 512)
        await client.close()

    asyncio.run(main())


def test_client_abort_and_server_close(nbd_server: ServerThread) -> None:
    nbd_server.exports["mem"] = MemoryExport(MIB)

    async def main() -> None:
        first = await NbdClient.connect("127.0.0.1", nbd_server.port, "mem")
        second = await NbdClient.connect("127.0.0.1", nbd_server.port, "mem")
        first.abort()
        with pytest.raises(NbdConnectionClosed):
            await first.read(0, 1)
        await asyncio.sleep(0)  # a scheduling point: the transport closes the socket
        wait_for("one connection", lambda: nbd_server.call(nbd_server.server.connection_count) == 1, 10)
        nbd_server.run(nbd_server.server.close())
        with pytest.raises(NbdConnectionClosed):
            await second.read(0, 1)
        await second.close()

    asyncio.run(main())
