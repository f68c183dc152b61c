"""Our NbdServer against our NbdClient, over real loopback sockets."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from openevs.agent.nbd import constants as c
from openevs.agent.nbd.client import NbdClient
from openevs.agent.nbd.constants import Command, Errno, Reply
from openevs.agent.nbd.errors import NbdConnectionClosed, NbdError, NbdOptionRefused
from openevs.agent.nbd.export import FileExport
from tests.support.waiting import wait_for

from .conftest import ServerThread, sparse_file

HOLE = c.STATE_HOLE | c.STATE_ZERO


def test_one_connection_reads_what_another_wrote(nbd_server: ServerThread, disk: tuple[str, Path]) -> None:
    name, _path = disk

    async def main() -> None:
        writer = await NbdClient.connect("127.0.0.1", nbd_server.port, name)
        reader = await NbdClient.connect("127.0.0.1", nbd_server.port, name)
        assert writer.size_bytes == 64 << 20 and not writer.read_only
        assert writer.flags & c.FLAG_CAN_MULTI_CONN
        data = os.urandom(3 << 20)
        await writer.write(1 << 20, data)
        await writer.flush()
        assert await reader.read(1 << 20, len(data)) == data
        await writer.close()
        await reader.close()

    asyncio.run(main())


def test_pipelined_requests_out_of_order(nbd_server: ServerThread, disk: tuple[str, Path]) -> None:
    name, _ = disk
    rng = random.Random(7)
    blocks = {i: rng.randbytes(rng.choice([512, 4096, 65536, 1 << 20])) for i in range(48)}

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, name) as client:
            await asyncio.gather(
                *(client.write(i * (1 << 20), data, fua=i % 5 == 0) for i, data in blocks.items())
            )
            reads = await asyncio.gather(*(client.read(i * (1 << 20), len(d)) for i, d in blocks.items()))
            assert reads == list(blocks.values())

    asyncio.run(main())


def test_simple_replies_without_structured_negotiation(
    nbd_server: ServerThread, disk: tuple[str, Path]
) -> None:
    name, _ = disk

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, name, structured=False) as client:
            assert not client.structured and not client.flags & c.FLAG_SEND_DF
            await client.write(0, b"abc" * 1000)
            assert await client.read(0, 3000) == b"abc" * 1000
            with pytest.raises(NbdError) as info:
                await client.block_status(0, 4096)
            assert info.value.errno == Errno.EINVAL

    asyncio.run(main())


def test_block_status_trim_and_zeroes(nbd_server: ServerThread, disk: tuple[str, Path]) -> None:
    name, _ = disk
    mib = 1 << 20

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, name) as client:
            assert await client.block_status(0, 64 * mib) == [(64 * mib, HOLE)]
            await client.write(2 * mib, b"\x01" * mib)
            extents = await client.block_status(0, 64 * mib)
            assert extents == [(2 * mib, HOLE), (mib, 0), (61 * mib, HOLE)]
            assert await client.block_status(0, 64 * mib, req_one=True) == [(2 * mib, HOLE)]
            # A read across data and holes comes back as OFFSET_DATA + OFFSET_HOLE chunks.
            assert await client.read(mib, 3 * mib) == bytes(mib) + b"\x01" * mib + bytes(mib)
            await client.trim(2 * mib, mib, fua=True)
            assert await client.block_status(2 * mib, mib) == [(mib, HOLE)]
            await client.write(4 * mib, b"\x02" * mib)
            await client.write_zeroes(4 * mib, mib, fast=True)
            assert await client.read(4 * mib, mib) == bytes(mib)
            await client.write(5 * mib, b"\x03" * mib)
            await client.write_zeroes(5 * mib, mib, no_hole=True, fua=True)
            assert await client.read(5 * mib, mib) == bytes(mib)
            await client.cache(0, mib)
            await client.flush()

    asyncio.run(main())


def test_out_of_range_and_bad_requests(nbd_server: ServerThread, disk: tuple[str, Path]) -> None:
    name, _ = disk

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, name) as client:
            for call, errno in [
                (client.read(64 << 20, 1), Errno.EINVAL),
                (client.write((64 << 20) - 1, b"ab"), Errno.ENOSPC),
                (client.request_raw(42, 0, 0), Errno.EINVAL),
                (client.request_raw(Command.READ, 0, 512, 1 << 7), Errno.EINVAL),
            ]:
                with pytest.raises(NbdError) as info:
                    await call
                assert info.value.errno == errno
            assert await client.read(0, 4) == bytes(4)  # the connection survived

    asyncio.run(main())


def test_read_only_export_refuses_writes(nbd_server: ServerThread, tmp_path: Path) -> None:
    nbd_server.exports["ro"] = FileExport(sparse_file(tmp_path / "ro.img", 1 << 20), read_only=True)

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, "ro") as client:
            assert client.read_only
            for call in (client.write(0, b"x"), client.trim(0, 512), client.write_zeroes(0, 512)):
                with pytest.raises(NbdError) as info:
                    await call
                assert info.value.errno == Errno.EPERM
            assert await client.read(0, 512) == bytes(512)

    asyncio.run(main())


def test_unknown_export_is_refused(nbd_server: ServerThread, disk: tuple[str, Path]) -> None:
    async def main() -> None:
        with pytest.raises(NbdOptionRefused) as info:
            await NbdClient.connect("127.0.0.1", nbd_server.port, "no-such-export")
        assert info.value.reply == Reply.ERR_UNKNOWN

    asyncio.run(main())


def test_drop_export_closes_its_connections(
    nbd_server: ServerThread, disk: tuple[str, Path], tmp_path: Path
) -> None:
    name, _ = disk
    nbd_server.exports["other"] = FileExport(sparse_file(tmp_path / "o.img", 1 << 20))

    async def main() -> None:
        victim = await NbdClient.connect("127.0.0.1", nbd_server.port, name)
        survivor = await NbdClient.connect("127.0.0.1", nbd_server.port, "other")
        await victim.read(0, 512)
        assert nbd_server.call(nbd_server.server.connection_count, name) == 1
        del nbd_server.exports[name]
        assert nbd_server.call(nbd_server.server.drop_export, name) == 1
        with pytest.raises(NbdConnectionClosed):
            await victim.read(0, 512)
        await survivor.read(0, 512)
        count = nbd_server.server.connection_count
        wait_for("no connection left", lambda: nbd_server.call(count, name) == 0, 10)
        with pytest.raises(NbdOptionRefused):
            await NbdClient.connect("127.0.0.1", nbd_server.port, name)
        await victim.close()
        await survivor.close()

    asyncio.run(main())


def test_grown_disk_is_seen_by_new_connections(nbd_server: ServerThread, disk: tuple[str, Path]) -> None:
    name, path = disk

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, name) as before:
            assert before.size_bytes == 64 << 20
            os.truncate(path, 128 << 20)
            async with await NbdClient.connect("127.0.0.1", nbd_server.port, name) as after:
                assert after.size_bytes == 128 << 20
                await after.write((128 << 20) - 4, b"tail")
                assert await after.read((128 << 20) - 4, 4) == b"tail"

    asyncio.run(main())


def test_terabyte_sparse_export(nbd_server: ServerThread, tmp_path: Path) -> None:
    tib = 1 << 40
    nbd_server.exports["big"] = FileExport(sparse_file(tmp_path / "big.img", tib))

    async def main() -> None:
        async with await NbdClient.connect("127.0.0.1", nbd_server.port, "big") as client:
            assert client.size_bytes == tib
            await client.write(tib - 4096, b"e" * 4096)
            assert await client.block_status(tib - (1 << 20), 1 << 20) == [
                ((1 << 20) - 4096, HOLE),
                (4096, 0),
            ]
            assert await client.read(tib - 8192, 8192) == bytes(4096) + b"e" * 4096

    asyncio.run(main())


def test_disconnect_waits_for_in_flight_writes(nbd_server: ServerThread, disk: tuple[str, Path]) -> None:
    name, path = disk

    async def main() -> None:
        client = await NbdClient.connect("127.0.0.1", nbd_server.port, name)
        writes = [asyncio.ensure_future(client.write(i << 20, b"w" * (1 << 20))) for i in range(8)]
        await asyncio.sleep(0)  # a scheduling point, not a wait: lets the writes go out
        await client.close()
        await asyncio.gather(*writes)

    asyncio.run(main())
    with open(path, "rb") as f:
        assert f.read(8 << 20) == b"w" * (8 << 20)
