"""The activity log of one replicated volume: which regions may differ from the peer.

A bit in the volume's bitmap file (bitmap.py) means "this region may differ
from the peer". It is set for every dirty region and for every region of a
*hot* extent (engine.HOT_EXTENT_REGIONS regions that writes are being
forwarded to), so a sequential writer persists one record per 4 MiB, not
one per write. The decisions (which extents to make hot ahead of a writer,
which to cool) are in engine.py; this module keeps the bits and the
bookkeeping of what the peer received.

Rules this module keeps:

- durable before local: `persist()` returns only once the bits are on disk
  (fdatasync), and the write path calls it (or `make_hot`) before it
  touches the local file, so after a crash the bitmap covers every region
  that may differ;
- bits are cleared lazily, and only after a peer FLUSH that began after the
  data was sent: a region the peer received is `unflushed` until a FLUSH
  that started later completes; a hot extent is cooled only when no write
  was made there for KEEP_IDLE_ROUNDS rounds (one round when more than
  HOT_KEEP are hot) and none is in flight;
- when the link is lost, exactly what the peer received but may not hold
  durably becomes dirty (its bits are on disk already); the hot extents are
  then done with and their other bits go (lazily), except extents with a
  write still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections import deque
from collections.abc import Callable, Iterable

from openevs.agent.mirror import engine
from openevs.agent.mirror.bitmap import BitmapFile
from openevs.agent.mirror.engine import NEVER_WRITTEN, MirrorState
from openevs.agent.mirror.link import LinkDown, PeerLink
from openevs.agent.mirror.regions import BitMap
from openevs.agent.mirror.tasks import Changes

SHORT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
COOL_INTERVAL_S = 2.0  # housekeeping period: flush the peer, clear what it holds durably
# Like DRBD's activity log, hot extents stay hot while there are few of them: an
# extent cools once idle for KEEP_IDLE_ROUNDS rounds, or for one round when more
# than HOT_KEEP extents are hot. A random writer then finds its extents hot (no
# bitmap fdatasync before its write); a crash of the primary resyncs about
# HOT_KEEP extents (4 GiB) at most, plus what was made hot within a round.
HOT_KEEP = 1024
KEEP_IDLE_ROUNDS = 10
RETIRE_WAIT_ROUNDS = 60  # x 0.1 s: forwards in flight end within the request timeout


class ActivityLog:
    def __init__(
        self, state: MirrorState, bitmap_path: str | os.PathLike[str], changes: Changes,
        size_bytes: Callable[[], int],
    ) -> None:  # fmt: skip
        self._state = state
        self._changes = changes
        self._size_bytes = size_bytes
        self.bitmap = BitmapFile(bitmap_path)
        # hot extent -> write counter at its last forwarded write (or NEVER_WRITTEN)
        self.hot: dict[int, int] = {}
        self.hot_pending: set[int] = set()  # extents whose bits are being persisted
        self._write_seq = 0
        # write counter at the last KEEP_IDLE_ROUNDS housekeeping rounds (newest last)
        self._rounds: deque[int] = deque(maxlen=KEEP_IDLE_ROUNDS)
        self.forwards = 0  # forwarded writes in flight
        # Regions the peer received (copied or forwarded) since its last FLUSH: in
        # sync once it flushes, dirty if the link is lost before.
        self._unflushed = BitMap()
        self.io_error = False
        self._work = asyncio.Event()  # set when there is something to cool (housekeeping)

    def load(self) -> BitMap:
        """Every region whose bit is on disk (on start, all of them are dirty)."""
        return self.bitmap.load()

    def close(self) -> None:
        self.bitmap.close()

    def remove(self) -> None:
        self.bitmap.remove()

    async def persist(self, regions: Iterable[int]) -> None:
        """Make the bits of `regions` durable (shared fdatasync) before returning."""
        try:
            self.bitmap.set_now(regions)
            await self.bitmap.sync()
        except OSError as exc:
            if exc.errno not in SHORT_OF_DESCRIPTORS:  # the agent is short, not the storage broken
                self.io_error = True
            raise OSError(exc.errno or errno.EIO, f"dirty bitmap: {exc.strerror}") from exc

    async def clear(self) -> None:
        """Nothing differs from the peer (a new secondary, a promotion, a resync)."""
        self.clear_unsynced()
        await self.bitmap.sync()

    def clear_unsynced(self) -> None:
        """`clear` but for its fdatasync, which the caller awaits later (bitmap.sync): a
        bitmap not yet durably empty holds more bits than it should, never fewer, so
        until then a crash costs copying, never a region missed."""
        self._state.dirty.clear()
        self.hot.clear()
        self._unflushed.clear()
        self.bitmap.clear_all()

    # -- hot extents --------------------------------------------------------

    async def make_hot(self, extents: list[int]) -> None:
        """Persist the bits of whole extents, then count them hot."""
        self.hot_pending.update(extents)
        try:
            await self.persist(engine.hot_regions(extents))
        except OSError:
            return  # io_error is set; the write path reports it on its own persist
        finally:
            self.hot_pending.difference_update(extents)
        for extent in extents:
            self.hot.setdefault(extent, NEVER_WRITTEN)
        self._work.set()

    def ahead(self, extents: range) -> list[int]:
        """Extents to make hot ahead of a sequential writer (engine.hot_ahead)."""
        return engine.hot_ahead(self.hot, self.hot_pending, extents, self._last_extent)

    def _last_extent(self) -> int:
        return (self._size_bytes() - 1) // engine.REGION_BYTES // engine.HOT_EXTENT_REGIONS

    @property
    def write_seq(self) -> int:
        """How many forwarded writes have begun (online verify: written since?)."""
        return self._write_seq

    def written_since(self, seq: int, regions: range) -> list[int]:
        """Regions of hot extents with a forwarded write begun after `seq`. Exact for
        writes less than COOL_INTERVAL_S old (an extent cools no sooner)."""
        hot = self.hot
        out: list[int] = []
        for extent in engine.hot_extents_of(regions):
            if hot.get(extent, NEVER_WRITTEN) > seq:
                span = engine.extent_regions(extent)
                out.extend(range(max(span.start, regions.start), min(span.stop, regions.stop)))
        return out

    def forward_started(self, regions: range) -> None:
        """A write to `regions` is being forwarded (their extents are hot)."""
        self._write_seq += 1
        seq = self._write_seq
        for extent in engine.hot_extents_of(regions):
            self.hot[extent] = seq
        self.forwards += 1

    def forward_reached(self, regions: range) -> None:
        self._unflushed.add_range(regions.start, regions.stop)
        self._work.set()

    async def forward_lost(self, regions: range) -> None:
        """The forward did not reach the peer (the link, and the group, went down
        synchronously in on_down): the regions are dirty now. Their bits are on
        disk (hot extent); this makes sure."""
        self._state.dirty.add_range(regions.start, regions.stop)
        await self.persist(regions)

    def forward_ended(self, regions: range) -> None:
        """After the write's `writing` mark is gone."""
        self.forwards -= 1
        if not self._state.link_up:
            self.release_hot(engine.hot_extents_of(regions))

    def copied(self, chunk: range) -> None:
        self._unflushed.add_range(chunk.start, chunk.stop)
        self._work.set()

    def release_hot(self, extents: Iterable[int]) -> None:
        """After a link loss, hot extents with no write in flight are done with:
        what differs there is in `dirty` now, the rest of their bits can go."""
        busy = engine.busy_extents(self._state.writing)
        done = engine.releasable(self.hot, extents, busy)
        for extent in done:
            del self.hot[extent]
        self.clear_bits(engine.hot_regions(done))

    def link_lost(self) -> None:
        """What the peer received but may not hold durably is dirty: exactly those
        regions. Then the hot extents are released (see release_hot)."""
        self._state.dirty |= self._unflushed
        self._unflushed.clear()
        self.release_hot(list(self.hot))

    def clear_bits(self, regions: BitMap) -> None:
        st = self._state
        with contextlib.suppress(OSError):  # lazy: a bit left set only costs a resync
            self.bitmap.clear_now(regions, (st.dirty, st.copying, engine.hot_regions(self.hot)))

    def _cool(self, extents: list[int], copied: BitMap) -> None:
        """The peer flushed after these extents' last writes and after `copied` arrived."""
        for extent in extents:
            del self.hot[extent]
        self._unflushed -= copied
        self.clear_bits(copied | engine.hot_regions(extents))

    # -- flushing the peer, then clearing -----------------------------------

    async def housekeeping(self, current_link: Callable[[], PeerLink | None]) -> None:
        """Every COOL_INTERVAL_S while there is something to cool: flush the peer, then
        clear (lazily) the bits of what it now holds durably: copied regions and hot
        extents idle since the previous round. Idle (nothing hot or unflushed), it
        waits for work without a timer."""
        while True:
            if not self.hot and not self._unflushed:
                self._work.clear()
                await self._work.wait()
            await asyncio.sleep(COOL_INTERVAL_S)
            link = current_link()
            if not self._state.in_sync_path or link is None:
                continue
            idle_since = self._idle_since()
            busy = engine.busy_extents(self._state.writing)
            candidates = engine.cool_candidates(self.hot, idle_since, busy)
            copied = self._unflushed.copy()
            if not candidates and not copied:
                continue
            try:
                await link.flush()  # begins after every candidate's last write ended
            except LinkDown:
                continue
            self._cool(engine.cooled(self.hot, candidates, idle_since), copied)

    def _idle_since(self) -> int:
        """This round's cooling threshold (write counter): the previous round's when
        more than HOT_KEEP extents are hot, else the one KEEP_IDLE_ROUNDS rounds ago
        (NEVER_WRITTEN until there were that many: only extents never written cool)."""
        rounds = self._rounds
        if len(self.hot) > HOT_KEEP:
            since = rounds[-1] if rounds else NEVER_WRITTEN
        else:
            since = rounds[0] if len(rounds) == rounds.maxlen else NEVER_WRITTEN
        rounds.append(self._write_seq)
        return since

    async def retire(self, link: PeerLink) -> None:
        """A link closed on purpose (pause, demotion, new peer): what was forwarded
        through it becomes durable on the peer with one last FLUSH, after the forwards
        still in flight ended; then those regions are in sync (the status can be
        active-stopped). If that fails, they are dirty."""
        flushed = False
        if link.up:
            for _ in range(RETIRE_WAIT_ROUNDS):
                if not self.forwards:
                    break
                await self._changes.wait(0.1)
        hot = dict(self.hot)
        copied = self._unflushed.copy()
        if link.up:
            try:
                await link.flush()
                flushed = not self.forwards
            except LinkDown:
                pass
        if flushed:
            self._cool(engine.unchanged(self.hot, hot), copied)
        else:
            self.link_lost()
