"""The replication decisions, without any I/O.

Everything here works on region numbers (a region is `REGION_BYTES` of the
volume) and plain state; it imports no asyncio, socket, file or clock, so
every decision is unit-tested directly. The I/O wrappers (replica.py,
link.py) ask this module and carry out the answer.

Rules this module keeps:

- a write is forwarded to the peer only when mirroring is on, the link is
  up, the consistency group (if any) is not split, no touched region is
  dirty and none is being copied; a region being copied makes the write
  wait, so a copy can never overwrite newer data on the peer;
- a write that touches any dirty region is kept local and marks all its
  regions dirty (the sync will copy them);
- the sync never picks a region that a write is still in flight to, for the
  same reason;
- one failed forward splits the whole group at once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from openevs.domain.replication import ReplicationStatus, Role

REGION_BYTES = 64 * 1024
# The activity log records "hot" extents, each this many regions (4 MiB),
# so a sequential writer persists one hot record per 4 MiB, not per write.
HOT_EXTENT_REGIONS = 64
MAX_CHUNK_REGIONS = 64  # one sync request copies at most 4 MiB


class WriteAction(enum.Enum):
    LOCAL = "local"  # standalone: write locally, track nothing
    REFUSE = "refuse"  # secondary or fenced: EPERM
    LOCAL_DIRTY = "local_dirty"  # write locally, mark its regions dirty
    WAIT = "wait"  # a touched region is being copied: wait, then decide again
    FORWARD = "forward"  # write locally and on the peer before the reply


def regions_of(offset: int, length: int, region_bytes: int = REGION_BYTES) -> range:
    """The regions a byte range touches (empty for length 0)."""
    if length <= 0:
        return range(0)
    return range(offset // region_bytes, (offset + length - 1) // region_bytes + 1)


def hot_extents_of(regions: range) -> range:
    if not regions:
        return range(0)
    return range(regions.start // HOT_EXTENT_REGIONS, (regions.stop - 1) // HOT_EXTENT_REGIONS + 1)


def extent_regions(extent: int) -> range:
    return range(extent * HOT_EXTENT_REGIONS, (extent + 1) * HOT_EXTENT_REGIONS)


@dataclass
class GroupState:
    """A consistency group's members on this agent, split as one."""

    group_id: str
    members: set[str] = field(default_factory=set)
    split: bool = True  # nothing is forwarded until every member's link is up

    def forward_failed(self) -> set[str]:
        """A member could not forward: every member stops forwarding now."""
        self.split = True
        return set(self.members)

    def maybe_join(self, ready: dict[str, bool]) -> bool:
        """Rejoin (forward again) only when every member that forwards (every primary
        member; `ready` names them) is mirroring with its link up."""
        if self.split and ready and all(ready.values()):
            self.split = False
            return True
        return False


@dataclass
class MirrorState:
    """What a write decision depends on, for one volume."""

    role: Role = Role.STANDALONE
    fenced: bool = False
    mirroring: bool = False
    link_up: bool = False
    group_split: bool = False
    dirty: set[int] = field(default_factory=set)
    copying: set[int] = field(default_factory=set)
    # region -> user writes in flight there (forwarded or kept local)
    writing: dict[int, int] = field(default_factory=dict)

    @property
    def in_sync_path(self) -> bool:
        """True when writes may go to the peer (the link is usable)."""
        return (
            self.role is Role.PRIMARY
            and not self.fenced
            and self.mirroring
            and self.link_up
            and not self.group_split
        )


def decide_write(state: MirrorState, offset: int, length: int) -> WriteAction:
    """What to do with a user WRITE, TRIM or WRITE_ZEROES of [offset, offset+length)."""
    if state.role is Role.STANDALONE:
        return WriteAction.LOCAL
    if state.role is Role.SECONDARY or state.fenced:
        return WriteAction.REFUSE
    regions = regions_of(offset, length)
    if any(r in state.copying for r in regions):
        return WriteAction.WAIT
    if not state.in_sync_path:
        return WriteAction.LOCAL_DIRTY
    if state.dirty and any(r in state.dirty for r in regions):
        return WriteAction.LOCAL_DIRTY
    return WriteAction.FORWARD


def decide_flush(state: MirrorState) -> bool:
    """True when a FLUSH must also flush the peer."""
    return state.in_sync_path


def status(
    state: MirrorState, *, io_error: bool, sync_running: bool, peer_ok: bool = True
) -> ReplicationStatus | None:
    """The replication_status of DESIGN.md section 3, from measured state.

    Only a primary knows it (the secondary cannot tell whether the primary
    has unreplicated writes); a secondary or standalone volume has none.
    """
    if state.role is not Role.PRIMARY:
        return None
    if io_error or not peer_ok:
        return ReplicationStatus.ERROR
    behind = bool(state.dirty or state.copying)
    if not state.mirroring:
        return ReplicationStatus.INACTIVE if behind else ReplicationStatus.ACTIVE_STOPPED
    if not state.in_sync_path:
        return ReplicationStatus.INACTIVE
    if behind or sync_running:
        return ReplicationStatus.COPYING
    return ReplicationStatus.ACTIVE


def sync_candidates(state: MirrorState) -> bool:
    """True when the sync has something it may copy now."""
    return state.in_sync_path and bool(state.dirty)


def take_chunk(
    order: Sequence[int], index: int, state: MirrorState, *,
    last_region: int, max_regions: int = MAX_CHUNK_REGIONS,
) -> tuple[list[int], int]:  # fmt: skip
    """The sync planner: the next chunk to copy from the sorted regions `order`.

    Returns the next run of consecutive copyable regions starting at
    `order[index:]` (at most `max_regions`, so a chunk is one request of at most
    4 MiB) and the index to continue from. A region is skipped when it is no
    longer dirty, already being copied, past the end of the volume, or has a
    user write in flight (a later pass copies it).
    """
    chunk: list[int] = []
    dirty, copying, writing = state.dirty, state.copying, state.writing
    while index < len(order) and len(chunk) < max_regions:
        region = order[index]
        if chunk and region != chunk[-1] + 1:
            break
        index += 1
        if region > last_region or region not in dirty or region in copying or region in writing:
            if chunk:
                break
            continue
        chunk.append(region)
    return chunk, index


def merge_ranges(
    regions: Iterable[int], size_bytes: int | None = None, region_bytes: int = REGION_BYTES
) -> list[tuple[int, int]]:
    """Regions as merged byte ranges (offset, length), clipped to `size_bytes`."""
    ranges: list[tuple[int, int]] = []
    for region in sorted(regions):
        offset = region * region_bytes
        length = region_bytes
        if size_bytes is not None:
            if offset >= size_bytes:
                break
            length = min(length, size_bytes - offset)
        if ranges and ranges[-1][0] + ranges[-1][1] == offset:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
        else:
            ranges.append((offset, length))
    return ranges


def regions_of_ranges(ranges: Iterable[tuple[int, int]]) -> set[int]:
    result: set[int] = set()
    for offset, length in ranges:
        result.update(regions_of(offset, length))
    return result


def dirty_bytes(regions: set[int], size_bytes: int, region_bytes: int = REGION_BYTES) -> int:
    """Bytes covered by `regions` within the volume, in O(1) for the usual case."""
    if not regions:
        return 0
    last = (size_bytes - 1) // region_bytes
    total = len(regions) * region_bytes
    if max(regions) >= last:  # rare: regions at or past the end are clipped
        total = sum(min(region_bytes, size_bytes - r * region_bytes) for r in regions if r <= last)
    return total
