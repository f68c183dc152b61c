"""agent/verify.py's region hashing on a real sparse file: the same digests as
reading and hashing every region, holes and the file's end included."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from openevs.agent.verify import DIGEST_BYTES, hash_regions

REGION = 64 * 1024
KEY = bytes(range(16))


def naive(path: Path, offset: int, length: int) -> list[str]:
    out = []
    with path.open("rb") as f:
        for start in range(offset, offset + length, REGION):
            size = min(REGION, offset + length - start)
            f.seek(start)
            data = f.read(size)
            out.append(hashlib.blake2b(data + bytes(size - len(data)), digest_size=DIGEST_BYTES,
                                       key=KEY).hexdigest())  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 20 << 20), (4 << 20, (16 << 20) + 1000), (19 << 20, 3 << 20), (3 * REGION, 70_000)],
)
def test_digests_match_a_plain_read_of_every_region(tmp_path: Path, offset: int, length: int) -> None:
    path = tmp_path / "vol.img"
    with path.open("wb") as f:
        f.truncate(20 << 20)  # sparse, with data in a few places
        f.seek(5 << 20)
        f.write(os.urandom(100_000))
        f.seek((9 << 20) + 123)
        f.write(b"x" * 7)
    assert hash_regions(str(path), offset, length, KEY) == naive(path, offset, length)


def test_one_changed_byte_changes_only_its_region(tmp_path: Path) -> None:
    path = tmp_path / "vol.img"
    path.write_bytes(os.urandom(1 << 20))
    before = hash_regions(str(path), 0, 1 << 20, KEY)
    with path.open("r+b") as f:
        f.seek(5 * REGION + 1)
        f.write(b"\0")
    after = hash_regions(str(path), 0, 1 << 20, KEY)
    assert [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == [5]
    assert hash_regions(str(path), 0, 1 << 20, bytes(16)) != before  # keyed: a new key, new digests
