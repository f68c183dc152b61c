"""The replication decisions, without any I/O.

Everything here works on region numbers (a region is `REGION_BYTES` of the
volume) and plain state; it imports no asyncio, socket, file or clock, so
every decision is unit-tested directly. The I/O wrappers (writes.py,
sync.py, activity.py, replica_link.py, groups.py) ask this module and carry
out the answer; plan.py holds the decisions about a config change.

Rules this module keeps:

- a write is forwarded to the peer only when mirroring is on, the link is
  up, the consistency group (if any) is not split, no touched region is
  dirty and none is being copied; a region being copied makes the write
  wait, so a copy can never overwrite newer data on the peer;
- a write that touches any dirty region is kept local and marks all its
  regions dirty (the sync will copy them);
- the sync never picks a region that a write is still in flight to, for the
  same reason;
- one failed forward splits the whole group at once; a group forwards again
  only when every primary member is ready;
- a hot extent's bits may be cleared only when no write is in flight there
  and none was made since the round whose peer FLUSH is now done.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field

from openevs.agent.mirror.regions import BitMap, as_regions, next_region, run_end, runs
from openevs.domain.replication import ReplicationStatus, Role

REGION_BYTES = 64 * 1024
# The activity log records "hot" extents, each this many regions (4 MiB),
# so a sequential writer persists one hot record per 4 MiB, not per write.
HOT_EXTENT_REGIONS = 64
MAX_CHUNK_REGIONS = 64  # one sync request copies at most 4 MiB
# A sequential writer keeps at least HOT_AHEAD extents (128 MiB) hot ahead of it;
# when fewer are, the next HOT_AHEAD_BATCH (256 MiB) are made hot with ONE fdatasync.
# A bitmap fdatasync can take 100+ ms while the filesystem's journal commits other
# files' data, so a short lookahead stalls the writer; a crash resyncs at most the
# window (DRBD's activity log holds gigabytes of hot extents by default).
HOT_AHEAD = 32
HOT_AHEAD_BATCH = 64
NEVER_WRITTEN = -1  # a hot extent made hot ahead of any write: nothing to resync there


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

    def regroup(self, ready: dict[str, bool]) -> bool:
        """Split unless every primary member (`ready` names them) can forward; rejoin
        once all can. Returns whether the group is split now."""
        if not all(ready.values()):
            self.split = True
        else:
            self.maybe_join(ready)
        return self.split


@dataclass
class MirrorState:
    """What a write decision depends on, for one volume."""

    role: Role = Role.STANDALONE
    fenced: bool = False
    mirroring: bool = False
    link_up: bool = False
    group_split: bool = False
    dirty: BitMap = field(default_factory=BitMap)  # regions.py: compact, walked in disk order
    copying: BitMap = field(default_factory=BitMap)
    # region -> user writes in flight there (forwarded or kept local)
    writing: dict[int, int] = field(default_factory=dict)
    # monotonic time since which the peer lacks an acknowledged write (meter.lag_s)
    behind_since: float | None = None

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


class SoloAction(enum.Enum):
    ACK = "ack"  # acknowledge: static priority, or the witness's grant is held
    WAIT = "wait"  # suspend: wait for the grant (or the peer) to come back
    FAIL = "fail"  # EIO: waited too long, or the witness gave the unit to the peer


def decide_solo(
    *, arbitrated: bool, lease: bool, outdated: bool, waited_s: float, timeout_s: float
) -> SoloAction:
    """May a write its peer did not get be acknowledged now (DESIGN 3, arbitration)?

    Only with the witness's live grant, when there is a witness; without one
    (static priority) always, as before. Without the grant the write waits
    (suspend) for at most `timeout_s`, then fails; it fails at once when the
    witness says the peer holds a higher epoch (this side lost for good).
    """
    if not arbitrated:
        return SoloAction.ACK
    if outdated:
        return SoloAction.FAIL
    if lease:
        return SoloAction.ACK
    if waited_s >= timeout_s:
        return SoloAction.FAIL
    return SoloAction.WAIT


def needs_lease(state: MirrorState) -> bool:
    """True while a primary may acknowledge writes its peer lacks (it must hold a grant):
    mirroring off or interrupted, or regions that differ (writes there stay local)."""
    if state.role is not Role.PRIMARY or state.fenced:
        return False
    return not state.in_sync_path or bool(state.dirty or state.copying)


def wants_link(state: MirrorState, *, has_peer: bool) -> bool:
    """True when the volume keeps a link to its peer: a mirroring, unfenced primary."""
    return state.role is Role.PRIMARY and state.mirroring and not state.fenced and has_peer


def group_ready(state: MirrorState) -> bool:
    """True when this member could forward if its group let it (what a group waits for)."""
    return state.role is Role.PRIMARY and state.mirroring and state.link_up and not state.fenced


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
    state: MirrorState, cursor: int, *, last_region: int, max_regions: int = MAX_CHUNK_REGIONS
) -> tuple[range, int | None]:
    """The sync planner: the next chunk to copy at or after region `cursor`.

    Returns the next run of consecutive copyable dirty regions (at most
    `max_regions`, so a chunk is one request of at most 4 MiB) and the region
    to continue from (None: nothing more in this pass). Walks the dirty set
    in disk order without materializing it. A region is skipped when it is
    already being copied, past the end of the volume, or has a user write in
    flight (a later pass copies it).
    """
    dirty, copying, writing = state.dirty, state.copying, state.writing
    while True:
        start = next_region(dirty, cursor)
        if start is None or start > last_region:
            return range(0), None
        stop = run_end(dirty, start, min(start + max_regions, last_region + 1))
        if copying.range_cardinality(start, stop) or writing:
            cut = start
            while cut < stop and cut not in copying and cut not in writing:
                cut += 1
            stop = cut
        if stop > start:
            return range(start, stop), stop
        cursor = start + 1


def merge_ranges(
    regions: Iterable[int], size_bytes: int | None = None, region_bytes: int = REGION_BYTES
) -> list[tuple[int, int]]:
    """Regions as merged byte ranges (offset, length), clipped to `size_bytes`."""
    ranges: list[tuple[int, int]] = []
    for run in runs(as_regions(regions)):
        offset, end = run.start * region_bytes, run.stop * region_bytes
        if size_bytes is not None:
            if offset >= size_bytes:
                break
            end = min(end, size_bytes)
        ranges.append((offset, end - offset))
    return ranges


def regions_of_ranges(ranges: Iterable[tuple[int, int]]) -> BitMap:
    result = BitMap()
    for offset, length in ranges:
        covered = regions_of(offset, length)
        if covered:
            result.add_range(covered.start, covered.stop)
    return result


def dirty_bytes(regions: BitMap, size_bytes: int, region_bytes: int = REGION_BYTES) -> int:
    """Bytes covered by `regions` within the volume, without walking them."""
    if not regions:
        return 0
    last = (size_bytes - 1) // region_bytes
    if regions.max() < last:
        return len(regions) * region_bytes
    # rare: regions at or past the end are clipped
    total = regions.range_cardinality(0, max(last, 0)) * region_bytes
    if size_bytes > 0 and last in regions:
        total += size_bytes - last * region_bytes
    return total


def hot_regions(extents: Iterable[int]) -> BitMap:
    """The regions of the hot extents `extents`."""
    out = BitMap()
    for extent in extents:
        out.add_range(extent * HOT_EXTENT_REGIONS, (extent + 1) * HOT_EXTENT_REGIONS)
    return out


# -- the activity log (hot extents) ------------------------------------------


def busy_extents(writing: Mapping[int, int]) -> set[int]:
    """The hot extents a user write is in flight to."""
    return {r // HOT_EXTENT_REGIONS for r in writing}


def hot_ahead(
    hot: Mapping[int, int], pending: Container[int], extents: range, last_extent: Callable[[], int],
    *, ahead: int = HOT_AHEAD, batch: int = HOT_AHEAD_BATCH,
) -> list[int]:  # fmt: skip
    """Extents just past a sequential writer's write (`extents`), to make hot before
    it gets there; `pending` are being made hot already.

    Only a writer that crossed from a written hot extent into the next one
    counts as sequential: scattered writes make nothing hot ahead (after a
    crash, every hot extent is resynced). `last_extent` (the volume's last
    extent) is asked only when the usual answer (nothing) is not certain.
    """
    if hot.get(extents.start - 1, NEVER_WRITTEN) == NEVER_WRITTEN:
        return []
    next_extent = extents.stop
    far = next_extent + ahead - 1
    if far in hot or far in pending:
        return []  # the usual case, decided without asking for the size
    last = last_extent()
    far = min(far, last)
    if far < next_extent or far in hot or far in pending:
        # The window's far end is hot, so is the rest (extents are made hot in
        # runs; a write that still finds one cold makes it hot itself).
        return []
    return [
        e for e in range(next_extent, min(next_extent + batch, last + 1))
        if e not in hot and e not in pending
    ]  # fmt: skip


def cool_candidates(hot: Mapping[int, int], round_seq: int, busy: Container[int]) -> list[int]:
    """Hot extents not written since the round that ended at write number `round_seq`
    and with no write in flight: a peer FLUSH that begins now covers all their data."""
    return [e for e, last in hot.items() if last <= round_seq and e not in busy]


def cooled(hot: Mapping[int, int], candidates: Iterable[int], round_seq: int) -> list[int]:
    """The candidates still not written (and still hot) once the peer's FLUSH is done:
    their bits may be cleared."""
    return [e for e in candidates if hot.get(e, round_seq + 1) <= round_seq]


def unchanged(hot: Mapping[int, int], before: Mapping[int, int]) -> list[int]:
    """Hot extents not written since the snapshot `before` (taken before a peer FLUSH)."""
    return [e for e, seq in before.items() if hot.get(e) == seq]


def releasable(hot: Container[int], extents: Iterable[int], busy: Container[int]) -> list[int]:
    """After a link loss: the hot extents among `extents` with no write in flight.
    What differs there is dirty already, so the rest of their bits can go."""
    return [e for e in extents if e in hot and e not in busy]
