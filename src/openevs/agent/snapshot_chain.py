"""The rules of a disk's snapshot chain, without I/O (docs/decisions.md "Snapshots").

A disk's snapshots form a chain, oldest first. Each holds the regions it
*preserved*: the content a region had when the snapshot was taken, copied
just before the first write to it after the snapshot (only the newest
snapshot preserves). Everything here is a pure function of the chain.

Rules this module keeps:

- a snapshot's view of region r is the preserved copy of the first
  snapshot at or after it in the chain that holds r, else the live disk;
- regions past a snapshot's size are not part of it (never preserved,
  never read);
- deleting a snapshot hands its older neighbour exactly the regions the
  neighbour read through it; nothing else changes any view.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from openevs.agent.mirror.engine import REGION_BYTES
from openevs.agent.mirror.regions import BitMap, as_regions, span
from openevs.agent.mirror.regions import runs as region_runs

LIVE = -1  # a read served by the disk itself


@dataclass
class Layer:
    """One snapshot of the chain: its id, its size and the regions it preserved."""

    snapshot_id: str
    size_bytes: int
    preserved: BitMap = field(default_factory=BitMap)  # compact (mirror/regions.py)

    @property
    def region_count(self) -> int:
        return -(-self.size_bytes // REGION_BYTES)


def regions_of(offset: int, length: int) -> range:
    """The regions a byte range touches."""
    if length <= 0:
        return range(0)
    return range(offset // REGION_BYTES, (offset + length - 1) // REGION_BYTES + 1)


def to_preserve(newest: Layer | None, offset: int, length: int) -> list[int]:
    """Regions a write of [offset, offset+length) must preserve first (none without snapshots)."""
    if newest is None:
        return []
    preserved, limit = newest.preserved, newest.region_count
    return [r for r in regions_of(offset, length) if r < limit and r not in preserved]


def source_of(chain: Sequence[Layer], index: int, region: int) -> int:
    """Where snapshot `index` reads `region`: the index of a layer, or LIVE."""
    for j in range(index, len(chain)):
        if region in chain[j].preserved:
            return j
    return LIVE


def plan_read(chain: Sequence[Layer], index: int, offset: int, length: int) -> list[tuple[int, int, int]]:
    """(source, offset, length) pieces of a read of snapshot `index`, in order.

    Bytes past the snapshot's size read as zeroes (source LIVE never covers
    them: the caller clips to the size)."""
    end = min(offset + length, chain[index].size_bytes)
    pieces: list[tuple[int, int, int]] = []
    pos = offset
    while pos < end:
        region = pos // REGION_BYTES
        stop = min(end, (region + 1) * REGION_BYTES)
        source = source_of(chain, index, region)
        if pieces and pieces[-1][0] == source and pieces[-1][1] + pieces[-1][2] == pos:
            src, start, size = pieces.pop()
            pieces.append((src, start, size + stop - pos))
        else:
            pieces.append((source, pos, stop - pos))
        pos = stop
    return pieces


def merge_on_delete(chain: Sequence[Layer], index: int) -> BitMap:
    """Regions the older neighbour of snapshot `index` must take over before it goes."""
    if index == 0:
        return BitMap()
    older = chain[index - 1]
    taken = as_regions(chain[index].preserved) & span(0, older.region_count)
    taken -= as_regions(older.preserved)
    return taken


def changed_since(chain: Sequence[Layer], index: int) -> BitMap:
    """Regions of the disk written since snapshot `index` (what a rollback rewrites)."""
    limit = span(0, chain[index].region_count)
    changed = BitMap()
    for layer in chain[index:]:
        changed |= as_regions(layer.preserved) & limit
    return changed


def runs(regions: Iterable[int]) -> list[tuple[int, int]]:
    """Regions in order as (first, count) runs of consecutive regions."""
    return [(run.start, len(run)) for run in region_runs(as_regions(regions))]


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, length) byte ranges sorted and joined where they touch or overlap."""
    merged: list[tuple[int, int]] = []
    for offset, length in sorted(ranges):
        if merged and offset <= merged[-1][0] + merged[-1][1]:
            start, size = merged.pop()
            merged.append((start, max(size, offset + length - start)))
        else:
            merged.append((offset, length))
    return merged
