"""The write-back overlay of a disk with snapshots, in process (snapshot_overlay.py).

A first write after a snapshot lands in the overlay and is read back from
it; the disk file and the snapshot keep the old bytes until a flush (or
the background drain) preserves and copies; a process that dies with
regions pending gets them back at the next load, a reboot discards them;
takes, deletes and rollbacks with pending regions keep every view right.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from openevs.agent import snapshot_overlay, snapshots
from openevs.agent.pool import FileVolumePool
from openevs.agent.snapshot_exports import CowFileExport
from openevs.agent.snapshot_store import SnapshotStore
from openevs.agent.snapshots import VolumeChain

R = 64 * 1024
SIZE = 32 * R


async def _no_drop(_name: str) -> None:
    return None


class Disk:
    def __init__(self, root: Path) -> None:
        self.pool = FileVolumePool(root / "pool")
        if not self.pool.exists("vol"):
            self.pool.create("vol", SIZE)
        self.path = self.pool.path("vol")
        self.store = SnapshotStore(self.pool, _no_drop)
        self.export = CowFileExport(self.path, False, self.store.chains, "vol")

    @property
    def chain(self) -> VolumeChain:
        return self.store.chains["vol"]

    def file_bytes(self, offset: int = 0, length: int = SIZE) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length).ljust(length, b"\0")

    def snapshot(self, snapshot_id: str, offset: int = 0, length: int = SIZE) -> bytes:
        chain = self.chain
        snap = chain.find(snapshot_id)
        assert snap is not None
        return chain.read(snap, offset, length)

    def close(self) -> None:
        """As a SIGKILL leaves it: nothing drained, the page cache kept."""
        self.export.close()
        self.store.close()


def no_background_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "DRAIN_IDLE_S", 3600.0)
    monkeypatch.setattr(snapshots, "DRAIN_EXPIRE_S", 3600.0)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


def pattern(seed: int, length: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(length)


def apply(base: bytes, offset: int, data: bytes) -> bytes:
    return base[:offset] + data + base[offset + len(data) :]


async def filled(tmp_path: Path, old: bytes) -> Disk:
    disk = Disk(tmp_path)
    await disk.export.write(0, old, False)
    await disk.export.flush()
    await disk.store.take("vol", "s1")
    return disk


def test_first_writes_go_to_the_overlay_and_reads_see_them(tmp_path: Path) -> None:
    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        live = old
        for offset, data in (
            (2 * R, pattern(2, 2 * R)),
            (5 * R + 4096, pattern(3, 4096)),
            (9 * R - 100, pattern(4, 300)),
        ):
            await disk.export.write(offset, data, False)
            live = apply(live, offset, data)
        assert disk.chain.overlay.pending  # acknowledged without a copy
        assert disk.file_bytes() == old  # the disk file still holds the snapshot's bytes
        assert disk.export.pread(0, SIZE) == live
        view = memoryview(bytearray(SIZE))
        disk.export.readinto(0, view)
        assert bytes(view) == live
        assert disk.snapshot("s1") == old
        await disk.export.write(5 * R + 8192, b"x" * 10, False)  # a pending region, rewritten
        live = apply(live, 5 * R + 8192, b"x" * 10)
        assert disk.export.pread(0, SIZE) == live
        await disk.export.flush()
        assert not disk.chain.overlay.pending
        assert disk.file_bytes() == live
        assert disk.snapshot("s1") == old
        assert disk.chain.overlay.data_path.stat().st_size == 0  # noqa: ASYNC240 (its space given back)
        disk.close()

    run(body)


def test_extents_count_pending_regions_as_data(tmp_path: Path) -> None:
    async def body() -> None:
        disk = Disk(tmp_path)
        await disk.store.take("vol", "s1")  # an empty disk: every extent a hole
        await disk.export.write(3 * R, b"y" * R, False)
        extents = disk.export.extents(0, SIZE)
        assert sum(n for n, _ in extents) == SIZE
        assert extents == [(3 * R, 3), (R, 0), (SIZE - 4 * R, 3)]
        disk.close()

    run(body)


def test_fua_drains_its_regions(tmp_path: Path) -> None:
    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        await disk.export.write(0, b"a" * R, False)
        await disk.export.write(10 * R, b"b" * R, True)
        assert set(disk.chain.overlay.pending) == {0}
        assert disk.file_bytes(10 * R, R) == b"b" * R
        disk.close()

    run(body)


def test_a_killed_process_finds_its_pending_writes_again(tmp_path: Path) -> None:
    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        data = pattern(5, 3 * R)
        await disk.export.write(4 * R + 512, data, False)
        live = apply(old, 4 * R + 512, data)
        disk.close()  # before the drain ran
        again = Disk(tmp_path)
        assert again.chain.overlay.pending
        again.store.start()
        assert again.export.pread(0, SIZE) == live
        assert again.snapshot("s1") == old
        await again.export.flush()
        assert again.file_bytes() == live
        assert again.snapshot("s1") == old
        again.close()

    run(body)


def test_a_reboot_discards_the_overlay_but_nothing_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        await disk.export.write(0, b"f" * R, False)
        await disk.export.flush()  # flushed: must survive
        await disk.store.take("vol", "s2")
        await disk.export.write(0, b"u" * R, False)  # not flushed: may go
        disk.close()
        monkeypatch.setattr(snapshot_overlay, "boot_id", lambda: b"another-boot")
        again = Disk(tmp_path)
        assert not again.chain.overlay.pending
        assert again.export.pread(0, R) == b"f" * R
        assert again.snapshot("s2", 0, R) == b"f" * R
        assert again.snapshot("s1") == old
        again.close()

    run(body)


def test_a_snapshot_taken_with_pending_regions_holds_them(tmp_path: Path) -> None:
    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        b = pattern(6, 4 * R)
        await disk.export.write(R + 7, b, False)
        at_s2 = apply(old, R + 7, b)
        await disk.store.take("vol", "s2")
        assert not disk.chain.overlay.pending  # drained at the instant
        c = pattern(7, 2 * R)
        await disk.export.write(2 * R, c, False)
        assert disk.chain.overlay.pending
        assert disk.snapshot("s1") == old
        assert disk.snapshot("s2") == at_s2
        assert disk.export.pread(0, SIZE) == apply(at_s2, 2 * R, c)
        await disk.export.flush()
        assert disk.snapshot("s1") == old
        assert disk.snapshot("s2") == at_s2
        disk.close()

    run(body)


def test_a_switch_cut_short_by_a_crash_is_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_background_drain(monkeypatch)  # nothing drains before the "crash"

    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        await disk.export.write(0, b"p" * R, False)  # pending, preserving into s1
        async with disk.chain.mutate:
            await disk.chain.prepare("s2")  # chain.json names s2 ...
        disk.close()  # ... and the process dies before the switch
        again = Disk(tmp_path)
        assert [s.snapshot_id for s in again.chain.snaps] == ["s1"]
        assert not (again.chain.directory / "s2.delta").exists()
        await again.export.flush()
        assert again.snapshot("s1") == old
        assert again.export.pread(0, R) == b"p" * R
        again.close()

    run(body)


def test_deleting_the_newest_with_pending_regions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_background_drain(monkeypatch)

    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        b = pattern(8, 8 * R)
        await disk.export.write(0, b, False)
        await disk.export.flush()
        at_s2 = apply(old, 0, b)
        await disk.store.take("vol", "s2")
        c = pattern(9, 12 * R)
        await disk.export.write(4 * R, c, False)  # pending, half over regions s1 preserved
        live = apply(at_s2, 4 * R, c)
        assert disk.chain.overlay.pending
        await disk.chain.delete("s2")
        assert disk.snapshot("s1") == old
        assert disk.export.pread(0, SIZE) == live
        disk.close()
        again = Disk(tmp_path)  # killed: the overlay's base is s1 now
        assert [s.snapshot_id for s in again.chain.snaps] == ["s1"]
        assert again.export.pread(0, SIZE) == live
        await again.export.flush()
        assert again.snapshot("s1") == old
        assert again.file_bytes() == live
        await again.chain.delete("s1")
        assert again.file_bytes() == live
        again.close()

    run(body)


def test_rollback_covers_pending_regions(tmp_path: Path) -> None:
    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        await disk.export.write(3 * R, pattern(10, 5 * R), False)
        assert disk.chain.overlay.pending
        while not (await disk.store.rollback("vol", "s1", disk.export)).done:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert disk.export.pread(0, SIZE) == old
        assert disk.file_bytes() == old
        disk.close()

    run(body)


def test_a_full_overlay_falls_back_to_the_copy_first(tmp_path: Path) -> None:
    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        disk.chain.overlay.budget = snapshot_overlay.Budget(2 * R)
        live = old
        for i in range(6):
            data = pattern(20 + i, R // 2)
            await disk.export.write(i * 3 * R + 100, data, False)
            live = apply(live, i * 3 * R + 100, data)
        assert len(disk.chain.overlay.pending) <= 3
        assert disk.export.pread(0, SIZE) == live
        assert disk.snapshot("s1") == old
        await disk.export.flush()
        assert disk.file_bytes() == live
        assert disk.snapshot("s1") == old
        disk.close()

    run(body)


def test_zeroes_and_trims_of_pending_regions(tmp_path: Path) -> None:
    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        await disk.export.write(0, b"z" * (4 * R), False)
        live = apply(old, 0, b"z" * (4 * R))
        await disk.export.write_zeroes(R + 10, R, False, True)
        live = apply(live, R + 10, bytes(R))
        await disk.export.trim(2 * R, R)  # advisory: a pending region keeps its bytes
        await disk.export.write_zeroes(20 * R, 2 * R, False, True)  # unpreserved: via the overlay
        live = apply(live, 20 * R, bytes(2 * R))
        assert disk.export.pread(0, SIZE) == live
        await disk.export.flush()
        assert disk.export.pread(0, SIZE) == live
        assert disk.snapshot("s1") == old
        disk.close()

    run(body)


def test_the_drain_runs_in_the_background_once_the_disk_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        old = pattern(1)
        disk = await filled(tmp_path, old)
        data = pattern(11, SIZE)
        await disk.export.write(0, data, False)
        for _ in range(500):
            if not disk.chain.overlay.pending:
                break
            await asyncio.sleep(0.01)
        assert not disk.chain.overlay.pending
        assert disk.file_bytes() == data
        assert disk.snapshot("s1") == old
        disk.close()

    monkeypatch.setattr(snapshots, "DRAIN_IDLE_S", 0.05)
    run(body)
