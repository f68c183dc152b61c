"""One replicated volume on this agent: its state, its write path and its sync.

The decisions come from engine.py; this module only carries them out.
Ordering rules it keeps (why each step is where it is):

- every user write on a primary has a durable bit on disk before it touches
  the local file: a dirty bit (the write stays local) or a hot-extent bit
  (the write is forwarded) — so after a crash the bitmap covers every
  region that may differ;
- a write marks its regions `writing` while it runs, and the sync never
  picks such a region; the sync moves a region from `dirty` to `copying`
  in one step before it reads it, and writes to a `copying` region wait —
  so a copy never overwrites newer data on the peer and a write during a
  copy is never lost;
- the link going down (a failed forward) splits the group synchronously,
  before the failing write is acknowledged;
- bits are cleared lazily, and only after a peer FLUSH that began after the
  data was sent, so a bit is never cleared for data the peer may not hold
  durably.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from openevs.agent.mirror import engine
from openevs.agent.mirror.bitmap import BitmapFile
from openevs.agent.mirror.engine import REGION_BYTES, MirrorState, WriteAction
from openevs.agent.mirror.link import LinkDown, PeerLink
from openevs.agent.nbd.errors import NbdError, RemoteProtocolError
from openevs.agent.pool import data_extents
from openevs.contract import ReplicationConfig, ReplicationState, SyncProgress
from openevs.domain.replication import ReplicationStatus, Role

if TYPE_CHECKING:
    from openevs.agent.mirror.manager import ReplicationManager

log = logging.getLogger(__name__)

PIPELINE = 16  # sync requests in flight
# A sequential writer keeps at least HOT_AHEAD extents (128 MiB) hot ahead of it;
# when fewer are, the next HOT_AHEAD_BATCH (256 MiB) are made hot with ONE fdatasync.
# A bitmap fdatasync can take 100+ ms while the filesystem's journal commits other
# files' data, so a short lookahead stalls the writer; a crash resyncs at most the
# window (DRBD's activity log holds gigabytes of hot extents by default).
HOT_AHEAD = 32
HOT_AHEAD_BATCH = 64
COOL_INTERVAL_S = 2.0  # hot extents idle this long are flushed on the peer and cleared
_ZEROS = bytes(engine.MAX_CHUNK_REGIONS * REGION_BYTES)
_IO_ERRNOS = (errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS)

_NEVER_WRITTEN = -1  # a hot extent made hot ahead of any write: nothing to resync there

LocalOp = Callable[[bool], Awaitable[None]]  # local(fua)
# The same request, sent to the peer: a coroutine, or a future of a request already sent.
ForwardOp = Callable[[PeerLink], Awaitable[object]]


class Replica:
    def __init__(
        self, manager: ReplicationManager, volume_id: str, config: ReplicationConfig,
        image_path: os.PathLike[str] | str, bitmap_path: os.PathLike[str] | str,
    ) -> None:  # fmt: skip
        self.manager = manager
        self.volume_id = volume_id
        self.config = config
        self.state = MirrorState(role=config.role, mirroring=config.mirroring)
        self.image_path = os.fspath(image_path)
        self._rfd = os.open(self.image_path, os.O_RDONLY)
        self.bitmap = BitmapFile(bitmap_path)
        self.state.dirty = self.bitmap.load()  # on start, every persisted bit is dirty
        # hot extent -> write counter at its last forwarded write (or _NEVER_WRITTEN)
        self.hot: dict[int, int] = {}
        self._write_seq = 0
        self._hot_pending: set[int] = set()  # extents whose bits are being persisted
        self._forwards = 0  # forwarded writes in flight
        self._round_seq = -1  # write counter at the previous housekeeping round
        # Regions the peer received (copied or forwarded) since its last FLUSH: in
        # sync once it flushes, dirty if the link is lost before.
        self._unflushed: set[int] = set()
        self._buffers: list[bytearray] = []  # reusable sync chunk buffers
        self._background: set[asyncio.Task[None]] = set()
        self.link: PeerLink | None = None
        self.io_error = False
        self.peer_blank = False  # the peer was punched: all-zero chunks need no request
        self.link_open = True  # secondary: the link export may be opened
        self.copied_bytes = 0
        self.resynced_bytes_total = 0
        self.sync_running = False
        self._sync_started = 0.0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._sync_loop()),
            loop.create_task(self._housekeeping()),
        ]
        self.update_link()

    async def close(self) -> None:
        self._closed = True
        self._notify()
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.link is not None:
            await self.link.close()
            self.link = None
        self.state.copying.clear()
        self._notify()
        self.bitmap.close()
        if self._rfd >= 0:
            os.close(self._rfd)
            self._rfd = -1

    def _notify(self) -> None:
        """Wake everything waiting for a state change (waiting writes, the sync)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout_s: float | None = None) -> None:
        event = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()

    @property
    def size_bytes(self) -> int:
        return os.fstat(self._rfd).st_size

    # -- link -------------------------------------------------------------

    def wants_link(self) -> bool:
        st = self.state
        return (
            st.role is Role.PRIMARY and st.mirroring and not st.fenced
            and self.config.peer is not None and not self._closed
        )  # fmt: skip

    def update_link(self) -> None:
        """Start or stop the link to match the config (synchronous part)."""
        peer = self.config.peer
        if self.link is not None and (not self.wants_link() or self.link.peer != peer):
            link, self.link = self.link, None
            self.state.link_up = False
            self.manager.member_failed(self, "link closed")
            task = asyncio.get_running_loop().create_task(self._retire_link(link))
            self._background.add(task)  # a task nobody references may be collected
            task.add_done_callback(self._background.discard)
        if self.link is None and self.wants_link():
            assert peer is not None
            self.link = PeerLink(
                f"{self.volume_id}->{peer.host}:{peer.port}", peer,
                on_up=self._on_link_up, on_down=self._on_link_down,
                min_size_bytes=lambda: self.size_bytes,
            )  # fmt: skip
            self.link.start()
        self._notify()

    async def _retire_link(self, link: PeerLink) -> None:
        """Close a link on purpose (pause, demotion, new peer) without losing track.

        What was forwarded through it becomes durable on the peer with one last
        FLUSH, after the forwards still in flight ended; then those regions are
        in sync (the status can be active-stopped). If that fails, they are dirty.
        """
        flushed = False
        if link.up:
            for _ in range(60):  # forwards in flight end within the request timeout
                if not self._forwards:
                    break
                await self._wait_change(0.1)
        hot = dict(self.hot)
        copied = set(self._unflushed)
        if link.up:
            try:
                await link.flush()
                flushed = not self._forwards
            except LinkDown:
                pass
        await link.close()
        if flushed:
            cooled = [e for e, seq in hot.items() if self.hot.get(e) == seq]
            for extent in cooled:
                del self.hot[extent]
            self._unflushed -= copied
            self._clear_bits(copied | {r for e in cooled for r in engine.extent_regions(e)})
        else:
            self._mark_unflushed_dirty()
        self._notify()

    def _on_link_up(self, link: PeerLink) -> None:
        if link is not self.link:
            return
        self.state.link_up = True
        self.manager.link_changed(self)
        self._notify()

    def _on_link_down(self, link: PeerLink, reason: str) -> None:
        """Synchronous, before the failed request's caller resumes: the group splits now."""
        if link is not self.link:
            return
        self.state.link_up = False
        self._mark_unflushed_dirty()
        self.manager.member_failed(self, reason)
        self._notify()

    def _mark_unflushed_dirty(self) -> None:
        """The link is lost: what the peer received but may not hold durably is dirty.

        Exactly those regions (their bits are on disk already: hot extent or
        copy). The hot extents are then done with: their other bits are cleared
        (lazily), so a crash later resyncs what differs, not whole extents —
        except extents with a write still in flight, which keep their bits.
        """
        self.state.dirty.update(self._unflushed)
        self._unflushed.clear()
        self._release_hot(list(self.hot))

    # -- user I/O ---------------------------------------------------------

    async def user_io(
        self, offset: int, length: int, local: LocalOp, forward: ForwardOp, fua: bool
    ) -> None:
        """Carry out one WRITE / TRIM / WRITE_ZEROES of a user of this volume."""
        st = self.state
        regions = engine.regions_of(offset, length)
        while True:
            action = engine.decide_write(st, offset, length)
            if action is WriteAction.LOCAL:
                await self._local(local, fua)
                return
            if action is WriteAction.REFUSE:
                raise OSError(errno.EPERM, self._refusal())
            if action is WriteAction.WAIT:
                await self._wait_change()
                continue
            if action is WriteAction.FORWARD:
                extents = engine.hot_extents_of(regions)
                cold = [e for e in extents if e not in self.hot]
                ahead = self._ahead(extents)
                if cold:
                    await self._make_hot(cold + ahead)  # one fdatasync for both
                    continue  # the state may have changed while the bits were synced
                if ahead:
                    # A sequential writer finds its next extents hot already.
                    task = asyncio.get_running_loop().create_task(self._make_hot(ahead))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                await self._forwarded(regions, local, forward, fua)
                return
            await self._local_dirty(regions, local, fua)
            return

    def _ahead(self, extents: range) -> list[int]:
        """Extents just past a sequential writer's write, to make hot before it gets there.

        Only a writer that crossed from a written hot extent into the next one
        counts as sequential: scattered writes make nothing hot ahead (after a
        crash, every hot extent is resynced).
        """
        if self.hot.get(extents.start - 1, _NEVER_WRITTEN) == _NEVER_WRITTEN:
            return []
        next_extent = extents.stop
        hot, pending = self.hot, self._hot_pending
        far = next_extent + HOT_AHEAD - 1
        if far in hot or far in pending:
            return []  # the usual case, decided without an fstat
        last = (self.size_bytes - 1) // REGION_BYTES // engine.HOT_EXTENT_REGIONS
        far = min(far, last)
        if far < next_extent or far in hot or far in pending:
            # The usual case: the window's far end is hot, so is the rest (extents are
            # made hot in runs; a write that still finds one cold makes it hot itself).
            return []
        return [
            e for e in range(next_extent, min(next_extent + HOT_AHEAD_BATCH, last + 1))
            if e not in hot and e not in pending
        ]  # fmt: skip

    async def _make_hot(self, extents: list[int]) -> None:
        """Persist the bits of whole extents, then count them hot (activity log)."""
        self._hot_pending.update(extents)
        try:
            await self._persist(r for e in extents for r in engine.extent_regions(e))
        except OSError:
            return  # io_error is set; the write path reports it on its own persist
        finally:
            self._hot_pending.difference_update(extents)
        for extent in extents:
            self.hot.setdefault(extent, _NEVER_WRITTEN)

    def _refusal(self) -> str:
        if self.state.role is Role.SECONDARY:
            return f"volume {self.volume_id} is a replication secondary (read-only)"
        return f"volume {self.volume_id} is fenced until the controller confirms its epoch"

    async def _local(self, local: LocalOp, fua: bool) -> None:
        try:
            await local(fua)
        except OSError as exc:
            if exc.errno in _IO_ERRNOS:
                self.io_error = True
            raise

    def _begin(self, regions: range) -> None:
        writing = self.state.writing
        for r in regions:
            writing[r] = writing.get(r, 0) + 1

    def _end(self, regions: range) -> None:
        writing = self.state.writing
        for r in regions:
            left = writing[r] - 1
            if left:
                writing[r] = left
            else:
                del writing[r]

    async def _local_dirty(self, regions: range, local: LocalOp, fua: bool) -> None:
        self._begin(regions)
        try:
            self.state.dirty.update(regions)
            await self._persist(regions)
            await self._local(local, fua)
        finally:
            self._end(regions)
            self._notify()

    async def _forwarded(
        self, regions: range, local: LocalOp, forward: ForwardOp, fua: bool
    ) -> None:
        link = self.link
        self._write_seq += 1
        for extent in engine.hot_extents_of(regions):
            self.hot[extent] = self._write_seq
        self._begin(regions)
        try:
            # The peer's copy is sent first and the local write runs meanwhile; the
            # `writing` guard keeps the sync away from these regions until both end.
            self._forwards += 1
            generation = link.generation if link is not None else -1
            sent = self._start_send(link, forward)
            try:
                await self._local(local, fua)
            finally:
                reached = await self._reached(sent)
            if reached and link is self.link and link is not None and link.received(generation):
                self._unflushed.update(regions)
            else:
                # The link (and the group) went down synchronously in on_down; the
                # regions are dirty now, and their bits are on disk (hot extent).
                self.state.dirty.update(regions)
                await self._persist(regions)
        finally:
            self._forwards -= 1
            self._end(regions)
            st = self.state
            if not st.link_up:
                self._release_hot(engine.hot_extents_of(regions))
            # Waking the sync loop after every forwarded write costs as much as the
            # write's own bookkeeping: only when someone may wait for this one (a
            # write or the sync, over copying or dirty regions; a retiring link).
            if st.dirty or st.copying or not st.link_up or link is not self.link:
                self._notify()

    def _release_hot(self, extents: Iterable[int]) -> None:
        """After a link loss, hot extents with no write in flight are done with:
        what differs there is in `dirty` now, the rest of their bits can go."""
        busy = {r // engine.HOT_EXTENT_REGIONS for r in self.state.writing}
        done = [e for e in extents if e in self.hot and e not in busy]
        for extent in done:
            del self.hot[extent]
        self._clear_bits(r for e in done for r in engine.extent_regions(e))

    @staticmethod
    def _start_send(link: PeerLink | None, forward: ForwardOp) -> asyncio.Future[Any] | None:
        """Start forwarding one request; None when it cannot be sent (link down)."""
        if link is None:
            return None
        try:
            return asyncio.ensure_future(forward(link))  # a future stays itself: no task
        except LinkDown:
            return None

    @staticmethod
    async def _reached(sent: asyncio.Future[Any] | None) -> bool:
        """False when the forwarded request did not reach the peer. The link is
        down already then (PeerLink takes it down before the error is seen)."""
        if sent is None:
            return False
        try:
            await sent
        except (LinkDown, NbdError, ConnectionError, RemoteProtocolError):
            return False
        return True

    async def user_flush(self, local_flush: Callable[[], Awaitable[None]]) -> None:
        if engine.decide_flush(self.state) and self.link is not None:
            link = self.link

            async def peer() -> None:
                with contextlib.suppress(LinkDown):
                    await link.flush()

            await asyncio.gather(self._local(lambda _f: local_flush(), False), peer())
        else:
            await self._local(lambda _f: local_flush(), False)

    async def _persist(self, regions: Iterable[int]) -> None:
        try:
            self.bitmap.set_now(regions)
            await self.bitmap.sync()
        except OSError as exc:
            self.io_error = True
            raise OSError(exc.errno or errno.EIO, f"dirty bitmap: {exc.strerror}") from exc

    # -- marking dirty (control API) ---------------------------------------

    async def mark_ranges(self, ranges: Iterable[tuple[int, int]]) -> None:
        regions = engine.regions_of_ranges(ranges)
        self.state.dirty.update(regions)
        await self._persist(regions)
        self._notify()

    async def mark_all_data(self) -> None:
        extents = await asyncio.to_thread(data_extents, self._rfd, 0, self.size_bytes)
        await self.mark_ranges(extents)

    async def clear_bitmap(self) -> None:
        self.state.dirty.clear()
        self.hot.clear()
        self._unflushed.clear()
        self.bitmap.clear_all()
        await self.bitmap.sync()

    # -- sync -------------------------------------------------------------

    async def _sync_loop(self) -> None:
        while not self._closed:
            if not engine.sync_candidates(self.state):
                if self.sync_running and not self.state.copying:
                    await self._finish_sync()
                await self._wait_change(1.0)
                continue
            if not self.sync_running:
                self.sync_running = True
                self.copied_bytes = 0
                self._sync_started = time.monotonic()
            progressed = await self._copy_pass()
            if not progressed:
                await self._wait_change(0.2)  # only busy regions left: let the writes end

    async def _copy_pass(self) -> bool:
        st = self.state
        order = sorted(st.dirty)
        index = 0
        tasks: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(PIPELINE)
        progressed = False
        last_region = (self.size_bytes - 1) // REGION_BYTES
        if order and order[-1] > last_region:  # never grown back: nothing to copy there
            st.dirty.difference_update(r for r in order if r > last_region)
        try:
            while index < len(order) and st.in_sync_path:
                await slots.acquire()
                if not st.in_sync_path:
                    slots.release()
                    break
                chunk, index = engine.take_chunk(order, index, st, last_region=last_region)
                if not chunk:
                    slots.release()
                    continue
                # One step: the regions leave `dirty` and enter `copying` before the read.
                st.dirty.difference_update(chunk)
                st.copying.update(chunk)
                progressed = True
                task = asyncio.get_running_loop().create_task(self._copy(chunk))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t: slots.release())
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        return progressed

    async def _copy(self, chunk: list[int]) -> None:
        st = self.state
        link = self.link
        offset = chunk[0] * REGION_BYTES
        length = min(len(chunk) * REGION_BYTES, self.size_bytes - offset)
        try:
            if link is None or length <= 0:
                raise LinkDown("link closed")
            buffer = self._buffers.pop() if self._buffers else bytearray(len(_ZEROS))
            try:
                generation = link.generation
                data = await asyncio.to_thread(self._read_chunk, offset, length, buffer)
                if data is None:
                    if not self.peer_blank:
                        await link.write_zeroes(offset, length)
                else:
                    await link.write(offset, data, False)
            finally:
                self._buffers.append(buffer)  # the reply came: the transport is done with it
            if not link.received(generation):
                raise LinkDown("the link broke after the copy was acknowledged")
            self.copied_bytes += length
            self.resynced_bytes_total += length
            self._unflushed.update(chunk)
        except (LinkDown, OSError) as exc:
            st.dirty.update(chunk)  # their bits are still on disk (clearing is lazy)
            if isinstance(exc, OSError):
                self.io_error = True
                log.error("replication of %s: cannot read local data: %s", self.volume_id, exc)
        finally:
            st.copying.difference_update(chunk)
            self._notify()

    def _read_chunk(self, offset: int, length: int, buffer: bytearray) -> memoryview | None:
        """The chunk's bytes (in `buffer`), or None when all zeros (a hole or written zeros).

        Chunk buffers are reused: a fresh 4 MiB object per chunk costs an mmap,
        page faults and page clearing, as much CPU as the copy itself.
        """
        if not data_extents(self._rfd, offset, length):
            return None
        view = memoryview(buffer)[:length]
        done = 0
        while done < length:
            n = os.preadv(self._rfd, [view[done:]], offset + done)
            if n <= 0:
                view[done:] = _ZEROS[: length - done]  # past the end (shrunk under us)
                break
            done += n
        head = min(length, 4096)
        if buffer[:head] != _ZEROS[:head]:
            return view  # data (the usual case): no full scan
        if (buffer == _ZEROS) if length == len(buffer) else (bytes(view) == _ZEROS[:length]):
            return None
        return view

    async def _finish_sync(self) -> None:
        """The dirty set drained: the peer holds every write (in its page cache, as
        acknowledged user writes are here). The copied regions' bits stay on disk
        until housekeeping has flushed the peer."""
        self.sync_running = False
        self.peer_blank = False
        log.info(
            "replication of %s: sync done, %d bytes copied in %.2f s", self.volume_id,
            self.copied_bytes, time.monotonic() - self._sync_started,
        )  # fmt: skip
        self._notify()

    def _clear_bits(self, regions: Iterable[int]) -> None:
        st = self.state
        hot_regions = {r for e in self.hot for r in engine.extent_regions(e)}
        with contextlib.suppress(OSError):  # lazy: a bit left set only costs a resync
            self.bitmap.clear_now(
                regions, lambda r: r in st.dirty or r in st.copying or r in hot_regions
            )

    async def _housekeeping(self) -> None:
        """Flush the peer, then clear (lazily) the bits of what it now holds durably:
        copied regions and hot extents idle since the previous round."""
        while not self._closed:
            await asyncio.sleep(COOL_INTERVAL_S)
            if not self.state.in_sync_path or self.link is None:
                continue
            previous, self._round_seq = self._round_seq, self._write_seq
            busy = {r // engine.HOT_EXTENT_REGIONS for r in self.state.writing}
            candidates = [e for e, last in self.hot.items() if last <= previous and e not in busy]
            copied = set(self._unflushed)
            if not candidates and not copied:
                continue
            try:
                await self.link.flush()  # begins after every candidate's last write ended
            except LinkDown:
                continue
            cooled = [e for e in candidates if self.hot.get(e, previous + 1) <= previous]
            for extent in cooled:
                del self.hot[extent]
            self._unflushed -= copied
            self._clear_bits(copied | {r for e in cooled for r in engine.extent_regions(e)})

    # -- reporting --------------------------------------------------------

    def describe(self) -> ReplicationState:
        st = self.state
        size = self.size_bytes
        status = engine.status(st, io_error=self.io_error, sync_running=self.sync_running)
        remaining = engine.dirty_bytes(st.dirty, size) + engine.dirty_bytes(st.copying, size)
        sync = None
        if status is ReplicationStatus.COPYING:
            sync = SyncProgress(copied_bytes=self.copied_bytes, total_bytes=self.copied_bytes + remaining)
        cfg = self.config
        return ReplicationState(
            volume_id=self.volume_id,
            role=cfg.role,
            epoch=cfg.epoch,
            pair_id=cfg.pair_id,
            group_id=cfg.group_id,
            peer=cfg.peer,
            link_export_set=cfg.link_export is not None,
            replication_status=status,
            link_up=st.link_up if st.role is Role.PRIMARY else self.manager.link_connected(self),
            link_error=(self.link.last_error if self.link is not None else "") or None,
            mirroring=st.mirroring,
            fenced=st.fenced or st.role is Role.SECONDARY,
            group_split=st.group_split,
            dirty_bytes=remaining,
            sync=sync,
            resynced_bytes_total=self.resynced_bytes_total,
            io_error=self.io_error,
        )
