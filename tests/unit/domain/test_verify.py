"""domain/verify.py: what a compared slice adds to a verify run."""

from __future__ import annotations

from openevs.domain.verify import (
    REGION_BYTES,
    SHOWN_RANGES,
    VerifyRun,
    add_slice,
    compare_slice,
    region_ranges,
)


def run(total: int = 64 * REGION_BYTES) -> VerifyRun:
    return VerifyRun(key="0" * 32, total_bytes=total, started_at="t")


def test_compare_slice_reports_differences_except_skipped_regions() -> None:
    ours = ["a", "b", "c", "d"]
    theirs = ["a", "X", "X", "d"]
    assert compare_slice(10, ours, theirs, skip=[12, 13]) == ([11], [12, 13])
    assert compare_slice(10, ours, ours, skip=[]) == ([], [])


def test_region_ranges_merge_neighbours_and_cut_at_the_end() -> None:
    assert region_ranges([5, 3, 4, 9], 100 * REGION_BYTES) == [
        [3 * REGION_BYTES, 3 * REGION_BYTES], [9 * REGION_BYTES, REGION_BYTES]
    ]  # fmt: skip
    assert region_ranges([1], REGION_BYTES + 100) == [[REGION_BYTES, 100]]


def test_add_slice_counts_checked_skipped_and_mismatched_bytes() -> None:
    r = run()
    bad = add_slice(r, 16 * REGION_BYTES, mismatched=[2, 3], skipped=[7])
    assert bad == [[2 * REGION_BYTES, 2 * REGION_BYTES]]
    assert (r.offset_bytes, r.checked_bytes, r.skipped_bytes, r.mismatched_bytes) == (
        16 * REGION_BYTES, 15 * REGION_BYTES, REGION_BYTES, 2 * REGION_BYTES
    )  # fmt: skip
    add_slice(r, 16 * REGION_BYTES, mismatched=[16], skipped=[])  # not next to region 3: a new range
    assert r.mismatched_ranges == [[2 * REGION_BYTES, 2 * REGION_BYTES], [16 * REGION_BYTES, REGION_BYTES]]
    assert r.view()["progress"] == "50"


def test_ranges_across_slices_merge_and_the_view_keeps_only_the_first_ones() -> None:
    r = run(total=10_000 * REGION_BYTES)
    add_slice(r, 4 * REGION_BYTES, mismatched=[3], skipped=[])
    add_slice(r, 4 * REGION_BYTES, mismatched=[4], skipped=[])
    assert r.mismatched_ranges == [[3 * REGION_BYTES, 2 * REGION_BYTES]]
    for _ in range(1, 300):
        add_slice(r, 4 * REGION_BYTES, mismatched=[r.offset_bytes // REGION_BYTES + 1], skipped=[])
    assert len(r.mismatched_ranges) == SHOWN_RANGES
    assert r.mismatched_bytes == 301 * REGION_BYTES  # every one counted (and marked dirty)


def test_a_run_survives_its_json() -> None:
    r = run()
    add_slice(r, 4 * REGION_BYTES, mismatched=[1], skipped=[2])
    assert VerifyRun.load(r.dump()) == r
    assert "key" not in r.view() and r.view()["status"] == "running"
