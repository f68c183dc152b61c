"""The sync of one replicated volume: copy every dirty region to the peer.

A loop wakes when there is something to copy (engine.sync_candidates) and
runs copy passes: the dirty regions in disk order (walked by runs, never
materialized), cut into chunks of at most 4 MiB by engine.take_chunk, up to
PIPELINE of them in flight.

Rules this module keeps:

- a chunk's regions move from `dirty` to `copying` in one step before the
  chunk is read, and writes to a `copying` region wait (engine.decide_write);
  the planner never picks a region a write is in flight to (`writing`) — so a
  copy never overwrites newer data on the peer and a write during a copy is
  never lost;
- a copy counts as received only if the connection that carried it is
  still up; otherwise, or when the local read fails, its regions are dirty
  again (their bits are still on disk: clearing is lazy). A received copy
  is in sync only after a later peer FLUSH (activity.py);
- a chunk that is all zeros is sent as WRITE_ZEROES, or not at all when the
  peer is blank (punched for the initial copy).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

from openevs.agent.mirror import engine
from openevs.agent.mirror.activity import ActivityLog
from openevs.agent.mirror.engine import REGION_BYTES, MirrorState
from openevs.agent.mirror.link import LinkDown, PeerLink
from openevs.agent.mirror.meter import ResyncMeter
from openevs.agent.mirror.ratelimit import TokenBucket
from openevs.agent.mirror.regions import MAX_REGION
from openevs.agent.mirror.stats import MIRROR_STATS
from openevs.agent.mirror.tasks import Changes
from openevs.agent.pool import data_extents

log = logging.getLogger(__name__)

PIPELINE = 16  # sync requests in flight
_ZEROS = bytes(engine.MAX_CHUNK_REGIONS * REGION_BYTES)


class LiveView(Protocol):
    """A volume whose live content is not all in its file (a snapshot overlay's pending
    regions): reads of it are patched in the event loop, where nothing moves them."""

    def read_live(self, buf: bytearray | memoryview, offset: int) -> None: ...

    def pending_ranges(self) -> list[tuple[int, int]]: ...


class Sync:
    def __init__(
        self, volume_id: str, state: MirrorState, activity: ActivityLog, changes: Changes,
        current_link: Callable[[], PeerLink | None], fd: Callable[[], int], size_bytes: Callable[[], int],
        pair_rate: Callable[[], int] = lambda: 0, agent_bucket: TokenBucket | None = None,
        live: Callable[[], LiveView | None] = lambda: None,
    ) -> None:  # fmt: skip
        self._volume_id = volume_id
        self._live = live
        self._state = state
        self._activity = activity
        self._changes = changes
        self._current_link = current_link
        self._fd = fd  # the volume, read-only (opened on first use)
        self._size_bytes = size_bytes
        self._buffers: list[bytearray] = []  # reusable chunk buffers
        self._started = 0.0
        self.running = False
        self.copied_bytes = 0
        self.resynced_bytes_total = 0
        self.peer_blank = False  # the peer was punched: all-zero chunks need no request
        self.io_error = False
        self.meter = ResyncMeter()
        self._pair_rate = pair_rate  # this pair's limit (its config), read per chunk
        self._pair_bucket = TokenBucket()
        self._agent_bucket = agent_bucket or TokenBucket()  # shared by every sync of the agent

    def _throttle(self, nbytes: int) -> float:
        """Seconds to wait before copying nbytes, under the pair's and the agent's limits."""
        now = time.monotonic()
        self._pair_bucket.set_rate(self._pair_rate())
        return max(self._pair_bucket.reserve(now, nbytes), self._agent_bucket.reserve(now, nbytes))

    def left_bytes(self) -> int:
        """Bytes still to copy (dirty, or being copied)."""
        st, size = self._state, self._size_bytes()
        return engine.dirty_bytes(st.dirty, size) + engine.dirty_bytes(st.copying, size)

    async def run(self) -> None:
        while True:
            if not engine.sync_candidates(self._state):
                if self.running and not self._state.copying:
                    self._finish()
                await self._changes.wait()  # idle: no timer, a state change wakes it
                continue
            if not self.running:
                self.running = True
                self.copied_bytes = 0
                self._started = time.monotonic()
            progressed = await self._copy_pass()
            if not progressed:
                await self._changes.wait(0.2)  # only busy regions left: let the writes end

    async def _copy_pass(self) -> bool:
        st = self._state
        try:
            self._fd()  # opened here, in the loop: the reads in threads only use it
        except OSError as exc:
            log.warning("replication of %s: cannot open the volume to copy it: %s", self._volume_id, exc)
            return False
        cursor: int | None = 0
        tasks: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(PIPELINE)
        progressed = False
        last_region = (self._size_bytes() - 1) // REGION_BYTES
        if st.dirty and st.dirty.max() > last_region:  # never grown back: nothing to copy there
            st.dirty.remove_range(last_region + 1, MAX_REGION)
        try:
            while cursor is not None and st.in_sync_path:
                await slots.acquire()
                if not st.in_sync_path:
                    slots.release()
                    break
                chunk, cursor = engine.take_chunk(st, cursor, last_region=last_region)
                if not chunk:
                    slots.release()
                    continue
                delay = self._throttle(len(chunk) * REGION_BYTES)
                if delay > 0:  # the regions stay dirty while we wait: writes go on meanwhile
                    await asyncio.sleep(delay)
                    if (
                        not st.in_sync_path
                        or not st.dirty.contains_range(chunk.start, chunk.stop)
                        or any(r in st.writing for r in chunk)
                    ):
                        slots.release()
                        continue  # the state moved on; the next pass plans again
                # One step: the regions leave `dirty` and enter `copying` before the read.
                st.dirty.remove_range(chunk.start, chunk.stop)
                st.copying.add_range(chunk.start, chunk.stop)
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

    async def _copy(self, chunk: range) -> None:
        st = self._state
        link = self._current_link()
        offset = chunk[0] * REGION_BYTES
        length = min(len(chunk) * REGION_BYTES, self._size_bytes() - offset)
        try:
            if link is None or length <= 0:
                raise LinkDown("link closed")
            buffer = self._buffers.pop() if self._buffers else bytearray(len(_ZEROS))
            try:
                generation = link.generation
                live = self._live()
                if live is None:
                    data = await asyncio.to_thread(self._read_chunk, offset, length, buffer)
                else:  # pending regions: read and patched in one step of the loop
                    data = self._read_live_chunk(offset, length, buffer, live)
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
            MIRROR_STATS.resync_bytes += length
            self._activity.copied(chunk)
            # `chunk` is still in `copying`: it counts as left until the finally below.
            self.meter.observe(time.monotonic(), self.resynced_bytes_total, self.left_bytes() - length)
        except (LinkDown, OSError) as exc:
            st.dirty.add_range(chunk.start, chunk.stop)  # their bits are still on disk (lazy clearing)
            if isinstance(exc, OSError):
                self.io_error = True
                log.error("replication of %s: cannot read local data: %s", self._volume_id, exc)
        finally:
            st.copying.remove_range(chunk.start, chunk.stop)
            self._changes.notify()

    def _read_chunk(self, offset: int, length: int, buffer: bytearray) -> memoryview | None:
        """The chunk's bytes (in `buffer`), or None when all zeros (a hole or written zeros).

        Chunk buffers are reused: a fresh 4 MiB object per chunk costs an mmap,
        page faults and page clearing, as much CPU as the copy itself.
        """
        fd = self._fd()
        if not data_extents(fd, offset, length):
            return None
        view = memoryview(buffer)[:length]
        done = 0
        while done < length:
            n = os.preadv(fd, [view[done:]], offset + done)
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

    def _read_live_chunk(
        self, offset: int, length: int, buffer: bytearray, live: LiveView
    ) -> memoryview | None:
        view = memoryview(buffer)[:length]
        fd, done = self._fd(), 0
        while done < length:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                view[done:] = _ZEROS[: length - done]
                break
            done += n
        live.read_live(view, offset)
        return None if bytes(view) == _ZEROS[:length] else view

    def _finish(self) -> None:
        """The dirty set drained: the peer holds every write (in its page cache, as
        acknowledged user writes are here). The copied regions' bits stay on disk
        until housekeeping has flushed the peer."""
        self.running = False
        self.peer_blank = False
        self._state.behind_since = None
        log.info(
            "replication of %s: sync done, %d bytes copied in %.2f s", self._volume_id,
            self.copied_bytes, time.monotonic() - self._started,
        )  # fmt: skip
        self._changes.notify()
