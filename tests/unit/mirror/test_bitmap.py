"""The persistent dirty bitmap: durable bits, reload, sparse on disk and in memory."""

from __future__ import annotations

import asyncio
import errno
import os
import tracemalloc
from pathlib import Path

import pytest

from openevs.agent.mirror.bitmap import BitmapFile
from openevs.agent.mirror.regions import BitMap, runs, span


def test_set_bits_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "v.bitmap"
    bitmap = BitmapFile(path)
    assert not bitmap.load()
    assert bitmap.set_now([0, 7, 8, 1000])
    assert not bitmap.set_now([0, 7])  # already on disk: nothing to write or sync
    asyncio.run(bitmap.sync())
    bitmap.close()
    assert set(BitmapFile(path).load()) == {0, 7, 8, 1000}


def test_clear_is_partial_and_keeps_what_is_still_needed(tmp_path: Path) -> None:
    path = tmp_path / "v.bitmap"
    bitmap = BitmapFile(path)
    bitmap.set_now(range(0, 16))
    bitmap.clear_now(range(0, 10), keep=[BitMap([3]), BitMap([12])])
    assert set(bitmap.on_disk) == {3, *range(10, 16)}
    bitmap.close()
    assert set(BitmapFile(path).load()) == {3, *range(10, 16)}


def test_clear_all(tmp_path: Path) -> None:
    path = tmp_path / "v.bitmap"
    bitmap = BitmapFile(path)
    bitmap.set_now([1, 2, 3])
    bitmap.clear_all()
    bitmap.close()
    assert not BitmapFile(path).load()


def test_a_huge_volume_costs_only_its_dirty_bits(tmp_path: Path) -> None:
    # 64 TiB of 64 KiB regions is 2**30 regions: a dense bitmap would be 128 MiB.
    path = tmp_path / "v.bitmap"
    far = [0, 2**29, 2**30 - 1]
    tracemalloc.start()
    bitmap = BitmapFile(path)
    bitmap.set_now(far)
    bitmap.close()
    reloaded = BitmapFile(path)
    assert set(reloaded.load()) == set(far)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20
    assert os.stat(path).st_blocks * 512 <= 64 * 1024  # sparse: three bytes written


def test_concurrent_syncs_share_one_fdatasync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bitmap = BitmapFile(tmp_path / "v.bitmap")
    calls = 0
    real = os.fdatasync

    def counting(fd: int) -> None:
        nonlocal calls
        calls += 1
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)

    async def main() -> None:
        bitmap.set_now([1])
        await asyncio.gather(*(bitmap.sync() for _ in range(10)))
        await bitmap.sync()  # nothing new: no fdatasync

    asyncio.run(main())
    assert calls == 1


def test_a_lazy_clear_costs_no_fdatasync_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bitmap = BitmapFile(tmp_path / "v.bitmap")
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])

    async def main() -> None:
        bitmap.set_now([1, 2])
        await bitmap.sync()
        bitmap.clear_now([2], keep=[])
        bitmap.set_now([1])  # on disk already: nothing to make durable
        await bitmap.sync()
        bitmap.set_now([3])  # a new bit: one fdatasync, the clear rides along
        await bitmap.sync()

    asyncio.run(main())
    assert len(calls) == 2
    assert set(BitmapFile(tmp_path / "v.bitmap").load()) == {1, 3}


def test_a_bitmap_never_written_holds_no_file_and_no_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "v.bitmap"
    bitmap = BitmapFile(path)
    assert not bitmap.load()
    bitmap.clear_all()
    asyncio.run(bitmap.sync())
    assert not path.exists() and bitmap._fd < 0
    bitmap.set_now([5])  # the first bit opens (and creates) it
    asyncio.run(bitmap.sync())
    assert path.exists() and bitmap._fd >= 0
    bitmap.close()
    assert set(BitmapFile(path).load()) == {5}


def test_a_file_written_by_an_earlier_agent_loads_as_it_is(tmp_path: Path) -> None:
    # The format never changed: bit i of byte b is region 8*b + i, bytes of zeros are holes.
    path = tmp_path / "v.bitmap"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, b"\x81", 0)
    os.pwrite(fd, b"\xff\xff\xff\x02", 100)
    os.close(fd)
    assert set(BitmapFile(path).load()) == {0, 7, *range(800, 824), 825}


def test_a_fully_dirty_32_tib_bitmap_is_64_mib_on_disk_and_small_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "v.bitmap"
    everything = 2**29  # 32 TiB of 64 KiB regions
    bitmap = BitmapFile(path)
    assert bitmap.set_now(span(0, everything))
    asyncio.run(bitmap.sync())
    bitmap.clear_now(range(64, 128), keep=[])  # a cleared hole in the middle of a byte run
    bitmap.close()
    assert os.stat(path).st_size == everything // 8 == 64 << 20
    reloaded = BitmapFile(path).load()
    assert list(runs(reloaded)) == [range(0, 64), range(128, everything)]
    stats = reloaded.get_statistics()
    assert stats["n_bytes_run_containers"] + stats["n_bytes_bitset_containers"] < 1 << 20


def test_a_failed_pwrite_leaves_the_bits_to_be_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bitmap = BitmapFile(tmp_path / "v.bitmap")

    def failing(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.EIO, "I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(os, "pwrite", failing)
        with pytest.raises(OSError):
            bitmap.set_now([3, 4])
    assert not bitmap.on_disk  # never counted as on disk: the next persist writes them
    assert bitmap.set_now([3, 4])
    bitmap.close()
    assert set(BitmapFile(tmp_path / "v.bitmap").load()) == {3, 4}
