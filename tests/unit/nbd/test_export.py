"""FileExport on real sparse temp files: reads, writes, zeroes, trim, extents."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from openevs.agent.nbd import export as export_module
from openevs.agent.nbd.constants import STATE_HOLE, STATE_ZERO
from openevs.agent.nbd.export import Export, FileExport

MIB = 1 << 20
HOLE = STATE_HOLE | STATE_ZERO


@pytest.fixture
def image(tmp_path: Path) -> FileExport:
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(16 * MIB)
    export = FileExport(path)
    yield export
    export.close()


def test_is_an_export(image: FileExport) -> None:
    assert isinstance(image, Export)
    assert image.size_bytes == 16 * MIB and not image.read_only


def test_write_then_read(image: FileExport) -> None:
    asyncio.run(image.write(MIB, b"abc" * 1000, fua=True))
    assert image.pread(MIB, 3000) == b"abc" * 1000
    buf = bytearray(3000)
    image.readinto(MIB, memoryview(buf))
    assert buf == b"abc" * 1000


def test_large_write_from_a_memoryview(image: FileExport) -> None:
    data = bytes(range(256)) * 4096
    asyncio.run(image.write(0, memoryview(data), fua=False))
    assert image.pread(0, len(data)) == data


def test_reads_past_the_end_are_zero_padded(image: FileExport) -> None:
    asyncio.run(image.write(16 * MIB - 2, b"zz", fua=False))
    assert image.pread(16 * MIB - 2, 6) == b"zz\0\0\0\0"
    buf = bytearray(b"\xff" * 6)
    image.readinto(16 * MIB - 2, memoryview(buf))
    assert buf == b"zz\0\0\0\0"


def test_extents_of_data_and_holes(image: FileExport) -> None:
    assert image.extents(0, 16 * MIB) == [(16 * MIB, HOLE)]
    asyncio.run(image.write(4 * MIB, b"\1" * MIB, fua=False))
    assert image.extents(0, 16 * MIB) == [(4 * MIB, HOLE), (MIB, 0), (11 * MIB, HOLE)]
    assert image.extents(4 * MIB + 512, 1024) == [(1024, 0)]


@pytest.mark.parametrize("may_trim", [True, False])
def test_write_zeroes(image: FileExport, may_trim: bool) -> None:
    asyncio.run(image.write(0, b"\1" * 2 * MIB, fua=False))
    asyncio.run(image.write_zeroes(0, MIB, fua=True, may_trim=may_trim))
    assert image.pread(0, MIB) == bytes(MIB)
    assert image.pread(MIB, 4) == b"\1" * 4
    if may_trim:
        assert image.extents(0, MIB) == [(MIB, HOLE)]


def test_trim_punches_a_hole(image: FileExport) -> None:
    asyncio.run(image.write(0, b"\1" * MIB, fua=False))
    asyncio.run(image.trim(0, MIB))
    assert image.extents(0, MIB) == [(MIB, HOLE)]
    asyncio.run(image.flush())


def test_without_fallocate_zeroes_are_written_but_fast_zero_fails(
    image: FileExport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "_fallocate", None)
    asyncio.run(image.write(0, b"\1" * MIB, fua=False))
    with pytest.raises(OSError) as info:
        asyncio.run(image.write_zeroes(0, MIB, fua=False, may_trim=True, fast_only=True))
    assert info.value.errno == errno.EOPNOTSUPP
    assert image.pread(0, 4) == b"\1" * 4
    asyncio.run(image.write_zeroes(0, MIB, fua=False, may_trim=True))
    assert image.pread(0, MIB) == bytes(MIB)
    asyncio.run(image.trim(0, MIB))  # advisory: a no-op without fallocate


def test_read_only_export(tmp_path: Path) -> None:
    path = tmp_path / "ro.img"
    path.write_bytes(b"x" * 4096)
    export = FileExport(path, read_only=True)
    try:
        assert export.read_only and export.pread(0, 4) == b"xxxx"
        with pytest.raises(OSError):
            asyncio.run(export.write(0, b"y", fua=False))
    finally:
        export.close()


def test_memory_export_is_sparse_and_resizable() -> None:
    from openevs.agent.nbd.export import MemoryExport

    mem = MemoryExport(4 * MIB, chunk_bytes=65536)
    assert isinstance(mem, Export)
    asyncio.run(mem.write(65536 - 2, b"abcd", fua=False))
    assert mem.pread(65536 - 4, 8) == b"\0\0abcd\0\0"
    assert mem.extents(0, 4 * 65536) == [(65536, 0), (65536, 0), (65536, HOLE), (65536, HOLE)]
    asyncio.run(mem.write_zeroes(0, 65536, fua=False, may_trim=True))
    assert mem.extents(0, 65536) == [(65536, HOLE)]
    assert mem.pread(65536, 2) == b"cd"
    asyncio.run(mem.trim(65536, 1))
    assert mem.pread(65536, 2) == b"\0d"
    mem.resize(65536)
    assert mem.size_bytes == 65536 and mem.extents(0, 65536) == [(65536, HOLE)]
    asyncio.run(mem.flush())
    assert mem.flushes == 1
    with pytest.raises(OSError):
        asyncio.run(MemoryExport(10, read_only=True).write(0, b"x", fua=False))
