"""Region sets: runs in disk order, the bitmap file's bytes, and the cost of a huge set."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openevs.agent.mirror.regions import (
    BitMap,
    add_bitmap_bytes,
    as_regions,
    bitmap_bytes,
    next_region,
    run_end,
    runs,
    span,
)

regions_strategy = st.sets(st.integers(min_value=0, max_value=400), max_size=200)


def _expected_bytes(regions: set[int], first_byte: int, count: int) -> bytearray:
    out = bytearray(count)
    for r in regions:
        if first_byte * 8 <= r < (first_byte + count) * 8:
            out[r // 8 - first_byte] |= 1 << (r % 8)
    return out


@given(regions_strategy)
def test_runs_walk_the_set_in_disk_order(regions: set[int]) -> None:
    bitmap = BitMap(regions)
    walked = list(runs(bitmap))
    assert [r for run in walked for r in run] == sorted(regions)
    assert all(a.stop < b.start for a, b in zip(walked, walked[1:], strict=False))  # maximal runs


@given(regions_strategy, st.integers(0, 60), st.integers(1, 20))
def test_bitmap_bytes_round_trip(regions: set[int], first_byte: int, count: int) -> None:
    bitmap = BitMap(regions)
    data = bitmap_bytes(bitmap, first_byte, count)
    assert data == _expected_bytes(regions, first_byte, count)
    back = BitMap()
    add_bitmap_bytes(back, bytes(data), first_byte)
    assert set(back) == {r for r in regions if first_byte * 8 <= r < (first_byte + count) * 8}


def test_helpers_at_the_edges() -> None:
    bitmap = BitMap([1, 2, 3, 7])
    assert next_region(bitmap, 4) == 7 and next_region(bitmap, 8) is None
    assert run_end(bitmap, 1) == 4 and run_end(bitmap, 1, limit=3) == 3 and run_end(bitmap, 7) == 8
    assert list(runs(bitmap, 2, 8)) == [range(2, 4), range(7, 8)]
    assert set(as_regions(range(5, 9))) == {5, 6, 7, 8} and as_regions(bitmap) is bitmap
    assert not span(4, 4)


def test_a_fully_dirty_32_tib_disk_is_a_few_runs() -> None:
    everything = 2**29  # 32 TiB of 64 KiB regions
    bitmap = span(0, everything)
    bitmap.remove_range(1000, 1001)
    assert list(runs(bitmap)) == [range(0, 1000), range(1001, everything)]
    stats = bitmap.get_statistics()
    held = stats["n_bytes_array_containers"] + stats["n_bytes_run_containers"]
    held += stats["n_bytes_bitset_containers"]
    assert held < 1 << 20  # a Python set: ~30 GiB
    # The bitmap file's bytes of a full stretch come out as 0xff runs, and back.
    data = bitmap_bytes(bitmap, 1 << 20, 1 << 20)
    assert data == b"\xff" * (1 << 20)
    back = BitMap()
    add_bitmap_bytes(back, bytes(data), 1 << 20)
    assert list(runs(back)) == [range(8 << 20, 16 << 20)]
