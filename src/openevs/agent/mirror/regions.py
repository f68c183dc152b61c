"""Sets of region numbers, compact: what the dirty, copying and on-disk bits are held in.

A region set is a pyroaring `BitMap` (32-bit values: regions of 64 KiB, so
disks up to 256 TiB). Runs of consecutive regions are stored as runs, so a
fully dirty 32 TiB disk (2**29 regions) costs tens of KiB, and a scattered
one at most one bit per region (64 MiB at 32 TiB), where a Python `set`
cost about 60 bytes per region (a fully dirty 1 TiB disk: ~1 GiB).

Everything here walks a set in disk order by runs (`runs`, `run_end`),
never by materializing it, and converts between sets and the bitmap file's
bytes (bit i of byte b is region 8*b + i). No I/O.

Rules this module keeps: a function that is given a set never changes it,
except `add_bitmap_bytes`, whose job that is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from pyroaring import BitMap

__all__ = [
    "BitMap",
    "add_bitmap_bytes",
    "as_regions",
    "bitmap_bytes",
    "next_region",
    "run_end",
    "runs",
    "span",
]

MAX_REGION = 2**32  # one past the largest region a BitMap holds
_FULL_OR_MIXED = re.compile(rb"\xff+|[^\x00\xff]")


def span(start: int, stop: int) -> BitMap:
    """The regions [start, stop)."""
    out = BitMap()
    if stop > start:
        out.add_range(start, stop)
    return out


def as_regions(values: Iterable[int]) -> BitMap:
    """`values` as a region set (a BitMap is returned as it is, a range in O(1))."""
    if isinstance(values, BitMap):
        return values
    if isinstance(values, range) and values.step == 1:
        return span(values.start, values.stop)
    return BitMap(values)


def next_region(regions: BitMap, start: int) -> int | None:
    """The first region >= start in the set, or None."""
    if start >= MAX_REGION:
        return None
    try:
        return regions.next_set_bit(max(start, 0))
    except ValueError:
        return None


def run_end(regions: BitMap, start: int, limit: int = MAX_REGION) -> int:
    """One past the run of consecutive regions that begins at `start` (in the set), cut at `limit`."""
    if regions.contains_range(start, limit):
        return limit
    good, bad = start + 1, limit  # [start, good) is in the set, [start, bad) is not
    step = 1
    while good + step < bad:  # gallop: a run's cost is the log of its length
        if not regions.contains_range(start, good + step):
            bad = good + step
            break
        good += step
        step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if regions.contains_range(start, mid):
            good = mid
        else:
            bad = mid
    return good


def runs(regions: BitMap, start: int = 0, stop: int = MAX_REGION) -> Iterator[range]:
    """The set's runs of consecutive regions within [start, stop), in disk order."""
    pos = start
    while pos < stop:
        first = next_region(regions, pos)
        if first is None or first >= stop:
            return
        end = run_end(regions, first, stop)
        yield range(first, end)
        pos = end + 1


def bitmap_bytes(regions: BitMap, first_byte: int, count: int) -> bytearray:
    """Bytes [first_byte, first_byte+count) of the bitmap file that holds `regions`."""
    out = bytearray(count)
    base = first_byte * 8
    for run in runs(regions, base, base + count * 8):
        lo, hi = run.start - base, run.stop - base
        full_lo, full_hi = -(-lo // 8), hi // 8
        if full_lo < full_hi:
            out[full_lo:full_hi] = b"\xff" * (full_hi - full_lo)
            for bit in range(lo, full_lo * 8):
                out[bit >> 3] |= 1 << (bit & 7)
            for bit in range(full_hi * 8, hi):
                out[bit >> 3] |= 1 << (bit & 7)
        else:
            for bit in range(lo, hi):
                out[bit >> 3] |= 1 << (bit & 7)
    return out


def add_bitmap_bytes(regions: BitMap, data: bytes, first_byte: int) -> None:
    """Add to `regions` every region whose bit is set in `data` (bytes of the bitmap file
    from `first_byte` on). Runs of 0xff bytes are added as ranges."""
    for match in _FULL_OR_MIXED.finditer(data):
        base = (first_byte + match.start()) * 8
        if match.group()[0] == 0xFF:
            regions.add_range(base, base + (match.end() - match.start()) * 8)
        else:
            value = match.group()[0]
            regions.update(base + bit for bit in range(8) if value >> bit & 1)
