"""FileVolumePool and data_extents on a real directory (sparse files)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from openevs.agent.grants import GrantTable, export_digest, validate_export_name
from openevs.agent.pool import (
    FileVolumePool,
    InvalidVolumeRequest,
    PoolIOError,
    VolumeConflict,
    VolumeNotFound,
    data_extents,
    write_atomic_many,
)
from openevs.contract import ExportGrant

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


@pytest.fixture
def pool(tmp_path: Path) -> FileVolumePool:
    return FileVolumePool(tmp_path / "pool")


def test_create_is_sparse_and_idempotent(pool: FileVolumePool) -> None:
    info = pool.create("vol-1", GiB)
    assert (info.volume_id, info.size_bytes, info.allocated_bytes) == ("vol-1", GiB, 0)
    assert pool.create("vol-1", GiB) == info
    assert pool.path("vol-1") == pool.root / "vol-1.img"
    assert [v.volume_id for v in pool.list()] == ["vol-1"]


def test_create_with_other_size_conflicts(pool: FileVolumePool) -> None:
    pool.create("vol-1", GiB)
    with pytest.raises(VolumeConflict) as exc:
        pool.create("vol-1", 2 * GiB)
    assert exc.value.reason == "conflict"
    assert pool.info("vol-1").size_bytes == GiB


def test_grow_same_size_ok_and_shrink_refused(pool: FileVolumePool) -> None:
    pool.create("v", GiB)
    with pool.path("v").open("r+b") as fh:
        fh.write(b"x" * 4096)
    assert pool.grow("v", 3 * GiB).size_bytes == 3 * GiB
    assert pool.grow("v", 3 * GiB).size_bytes == 3 * GiB
    with pytest.raises(InvalidVolumeRequest, match="cannot shrink"):
        pool.grow("v", GiB)
    assert pool.info("v").size_bytes == 3 * GiB
    with pool.path("v").open("rb") as fh:
        assert fh.read(4096) == b"x" * 4096


def test_grow_missing_volume(pool: FileVolumePool) -> None:
    with pytest.raises(VolumeNotFound) as exc:
        pool.grow("nope", GiB)
    assert exc.value.reason == "not_found"


def test_delete_is_idempotent(pool: FileVolumePool) -> None:
    pool.create("v", MiB)
    pool.delete("v")
    pool.delete("v")
    assert pool.list() == []
    with pytest.raises(VolumeNotFound):
        pool.info("v")


def test_crash_leftovers_removed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    root.mkdir()
    (root / ".tmp-vol-1").write_bytes(b"half")
    (root / ".tmp-exports.json").write_text("{")
    (root / "vol-2.img").write_bytes(b"")
    os.truncate(root / "vol-2.img", MiB)
    pool = FileVolumePool(root)
    assert sorted(p.name for p in root.iterdir()) == ["vol-2.img"]
    assert [v.volume_id for v in pool.list()] == ["vol-2"]
    assert pool.create("vol-1", MiB).size_bytes == MiB


def test_one_tib_costs_nothing(pool: FileVolumePool) -> None:
    started = time.monotonic()
    info = pool.create("big", TiB)
    pool.grow("big", 2 * TiB)
    assert data_extents(pool.path("big"), 0, 2 * TiB) == []
    pool.delete("big")
    assert info.allocated_bytes == 0
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "bad", ["", "../etc", "a/b", ".hidden", "-x", "x" * 129, "vol.img", "a b", "ü"]
)
def test_bad_ids_refused(pool: FileVolumePool, bad: str) -> None:
    with pytest.raises(InvalidVolumeRequest) as exc:
        pool.create(bad, MiB)
    assert exc.value.reason == "invalid_input"
    with pytest.raises(InvalidVolumeRequest):
        pool.delete(bad)


@pytest.mark.parametrize("size", [0, -512, 1000, 1.5, True, 1 << 50])
def test_bad_sizes_refused(pool: FileVolumePool, size: int) -> None:
    with pytest.raises(InvalidVolumeRequest):
        pool.create("v", size)
    assert pool.list() == []


def test_data_extents(pool: FileVolumePool) -> None:
    pool.create("v", 64 * MiB)
    path = pool.path("v")
    with path.open("r+b") as fh:
        for offset in (0, 8 * MiB, 8 * MiB + MiB, 40 * MiB):
            fh.seek(offset)
            fh.write(b"d" * MiB)
    extents = data_extents(path, 0, 64 * MiB)
    # Filesystems may round extents to their block size; our writes are aligned.
    assert extents == [(0, MiB), (8 * MiB, 2 * MiB), (40 * MiB, MiB)]
    assert data_extents(path, 8 * MiB + 4096, MiB) == [(8 * MiB + 4096, MiB)]
    assert data_extents(path, 41 * MiB, 100 * MiB) == []
    fd = os.open(path, os.O_RDONLY)
    try:
        assert data_extents(fd, 40 * MiB, 1) == [(40 * MiB, 1)]
    finally:
        os.close(fd)
    assert pool.info("v").allocated_bytes >= 4 * MiB


def test_capacity(pool: FileVolumePool) -> None:
    capacity, free = pool.capacity()
    assert 0 < free <= capacity


def test_export_table_persists_atomically(tmp_path: Path) -> None:
    table = GrantTable(tmp_path)
    assert table.grant("e1", ExportGrant(volume_id="v1", read_only=False)) is False
    assert table.grant("e1", ExportGrant(volume_id="v1", read_only=False)) is False
    assert table.grant("e2", ExportGrant(volume_id="v1", read_only=True)) is False
    assert table.grant("e2", ExportGrant(volume_id="v2", read_only=True)) is True
    assert table.items() == [
        ("e1", ExportGrant(volume_id="v1", read_only=False)),
        ("e2", ExportGrant(volume_id="v2", read_only=True)),
    ]
    reloaded = GrantTable(tmp_path)
    assert reloaded.items() == sorted([
        (export_digest("e1"), ExportGrant(volume_id="v1", read_only=False)),
        (export_digest("e2"), ExportGrant(volume_id="v2", read_only=True)),
    ])  # fmt: skip
    assert reloaded.get("e2") == ExportGrant(volume_id="v2", read_only=True)
    assert reloaded.names_for("v2") == ["e2"]  # learned from the client that opened it
    assert reloaded.get(export_digest("e1")) is None  # a digest opens nothing
    reloaded.revoke(["e1", "missing"])
    assert GrantTable(tmp_path).names_for("v1") == []
    assert not (tmp_path / ".tmp-exports.json").exists()


def test_export_names_are_not_kept_on_disk(tmp_path: Path) -> None:
    secret = "att-" + "s3cr3t" * 6
    table = GrantTable(tmp_path)
    table.grant(secret, ExportGrant(volume_id="v1", read_only=False))
    text = (tmp_path / "exports.json").read_text()
    assert secret not in text and export_digest(secret) in text
    assert (tmp_path / "exports.json").stat().st_mode & 0o077 == 0
    reloaded = GrantTable(tmp_path)
    [(shown, _)] = reloaded.items()
    reloaded.revoke([shown])  # the controller revokes a grant it only knows by digest
    assert GrantTable(tmp_path).items() == []


def test_a_table_of_plain_names_is_read_and_hashed_on_the_next_save(tmp_path: Path) -> None:
    old = {"exports": {"old-name": {"volume_id": "v1", "read_only": True}}}
    (tmp_path / "exports.json").write_text(json.dumps(old))
    table = GrantTable(tmp_path)
    assert table.get("old-name") == ExportGrant(volume_id="v1", read_only=True)
    table.grant("new-name", ExportGrant(volume_id="v2", read_only=False))
    assert "old-name" not in (tmp_path / "exports.json").read_text()
    assert GrantTable(tmp_path).get("old-name") == ExportGrant(volume_id="v1", read_only=True)


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "x" * 256, " e"])
def test_bad_export_names(bad: str) -> None:
    with pytest.raises(InvalidVolumeRequest):
        validate_export_name(bad)


def test_write_atomic_many_writes_every_file_and_its_last_data(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_bytes(b"old")
    files = [(tmp_path / f"{n}.json", f"{n}-1".encode()) for n in "abcdefghijkl"]
    write_atomic_many([*files, (tmp_path / "a.json", b"a-2")])  # a given twice: its last data
    assert (tmp_path / "a.json").read_bytes() == b"a-2"
    assert (tmp_path / "b.json").read_bytes() == b"b-1"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.json" for n in "abcdefghijkl")
    assert oct((tmp_path / "c.json").stat().st_mode & 0o777) == "0o600"
    write_atomic_many([])  # nothing to do


def test_write_atomic_many_fails_whole_and_leaves_the_old_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b"old-a")
    (tmp_path / ".tmp-b.json").mkdir()  # b's temporary file cannot be opened
    with pytest.raises(PoolIOError):
        write_atomic_many([(tmp_path / "a.json", b"new-a"), (tmp_path / "b.json", b"new-b")])
    assert (tmp_path / "a.json").read_bytes() == b"old-a"  # nothing renamed before every fsync
    assert not (tmp_path / "b.json").exists()
    assert not (tmp_path / ".tmp-a.json").exists()  # its temporary file removed
