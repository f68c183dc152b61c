"""The write path of one replicated volume: what a user's WRITE, TRIM, WRITE_ZEROES
and FLUSH do.

engine.decide_write says what to do; this module carries it out: write
locally only, write locally after marking the regions dirty, write locally
and on the peer before the reply, wait for a copy, or refuse (EPERM).

Rules this module keeps:

- every write on a primary has a durable bit on disk before it touches the
  local file: a dirty bit (the write stays local) or the hot bits of its
  extents (the write is forwarded; activity.py);
- a write marks its regions `writing` while it runs (the sync never picks
  such a region) and waits while a region it touches is `copying`;
- a forwarded write is acknowledged only once the peer answered; if it did
  not reach the peer, the link (and the group) went down synchronously
  before this code resumes, and the regions are dirty before the reply;
- a write acknowledged without its peer (kept local, or a lost forward)
  first passes the arbitration gate (solo.py): with a witness, only under
  its grant.

It is the hot path, so: no task per forwarded write (the peer's request is
sent at once and its future awaited, `PeerLink.start_write`), the peer's copy
is sent before the local write runs, waiting code is woken only when
someone may wait, and a sequential writer finds its next extents hot
already (made hot in batches, one fdatasync each, in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Awaitable, Callable

from openevs.agent.mirror import engine
from openevs.agent.mirror.activity import ActivityLog
from openevs.agent.mirror.engine import MirrorState, WriteAction
from openevs.agent.mirror.link import LinkDown, PeerLink
from openevs.agent.mirror.replica_link import ReplicaLink
from openevs.agent.mirror.solo import SoloGate
from openevs.agent.mirror.tasks import Changes, TaskSet
from openevs.agent.nbd.errors import NbdError, RemoteProtocolError
from openevs.domain.replication import Role

_IO_ERRNOS = (errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS)

LocalOp = Callable[[bool], Awaitable[None]]  # local(fua)
# The same request, sent to the peer: a coroutine, or a future of a request already sent.
ForwardOp = Callable[[PeerLink], Awaitable[object]]


class WritePath:
    def __init__(
        self, volume_id: str, state: MirrorState, activity: ActivityLog, link: ReplicaLink,
        changes: Changes, tasks: TaskSet, gate: SoloGate,
    ) -> None:  # fmt: skip
        self._volume_id = volume_id
        self._gate = gate
        self._state = state
        self._activity = activity
        self._link = link
        self._changes = changes
        self._tasks = tasks
        self.io_error = False

    async def user_io(self, offset: int, length: int, local: LocalOp, forward: ForwardOp, fua: bool) -> None:
        """Carry out one WRITE / TRIM / WRITE_ZEROES of a user of this volume."""
        st = self._state
        activity = self._activity
        regions = engine.regions_of(offset, length)
        while True:
            action = engine.decide_write(st, offset, length)
            if action is WriteAction.LOCAL:
                await self._local(local, fua)
                return
            if action is WriteAction.REFUSE:
                raise OSError(errno.EPERM, self._refusal())
            if action is WriteAction.WAIT:
                await self._changes.wait()
                continue
            if action is WriteAction.FORWARD:
                extents = engine.hot_extents_of(regions)
                hot = activity.hot
                cold = [e for e in extents if e not in hot]
                ahead = activity.ahead(extents)
                if cold:
                    await activity.make_hot(cold + ahead)  # one fdatasync for both
                    continue  # the state may have changed while the bits were synced
                if ahead:
                    # A sequential writer finds its next extents hot already.
                    self._tasks.spawn(activity.make_hot(ahead))
                await self._forwarded(regions, local, forward, fua)
                return
            await self._local_dirty(regions, local, fua)
            return

    def _refusal(self) -> str:
        if self._state.role is Role.SECONDARY:
            return f"volume {self._volume_id} is a replication secondary (read-only)"
        return f"volume {self._volume_id} is fenced until the controller confirms its epoch"

    async def _local(self, local: LocalOp, fua: bool) -> None:
        try:
            await local(fua)
        except OSError as exc:
            if exc.errno in _IO_ERRNOS:
                self.io_error = True
            raise

    def _begin(self, regions: range) -> None:
        writing = self._state.writing
        for r in regions:
            writing[r] = writing.get(r, 0) + 1

    def _end(self, regions: range) -> None:
        writing = self._state.writing
        for r in regions:
            left = writing[r] - 1
            if left:
                writing[r] = left
            else:
                del writing[r]

    async def _local_dirty(self, regions: range, local: LocalOp, fua: bool) -> None:
        self._begin(regions)
        st = self._state
        if st.behind_since is None:
            st.behind_since = time.monotonic()
        try:
            st.dirty.add_range(regions.start, regions.stop)
            await self._activity.persist(regions)
            await self._local(local, fua)
        finally:
            self._end(regions)
            self._changes.notify()
        await self._gate.allow(regions, fua)  # acknowledged alone: only as arbitration allows

    async def _forwarded(self, regions: range, local: LocalOp, forward: ForwardOp, fua: bool) -> None:
        activity = self._activity
        link = self._link.current
        activity.forward_started(regions)
        self._begin(regions)
        reached = False
        try:
            # The peer's copy is sent first and the local write runs meanwhile; the
            # `writing` guard keeps the sync away from these regions until both end.
            generation = link.generation if link is not None else -1
            sent = self._start_send(link, forward)
            try:
                await self._local(local, fua)
            finally:
                reached = await self._reached(sent)
            reached = reached and link is self._link.current and link is not None
            reached = reached and link is not None and link.received(generation)
            if reached:
                activity.forward_reached(regions)
            else:
                await activity.forward_lost(regions)
        finally:
            self._end(regions)
            activity.forward_ended(regions)
            st = self._state
            # Waking the sync loop after every forwarded write costs as much as the
            # write's own bookkeeping: only when someone may wait for this one (a
            # write or the sync, over copying or dirty regions; a retiring link).
            if st.dirty or st.copying or not st.link_up or link is not self._link.current:
                self._changes.notify()
        if not reached:
            await self._gate.allow(regions, fua)  # the peer lacks it: acknowledged alone, or not at all

    @staticmethod
    def _start_send(link: PeerLink | None, forward: ForwardOp) -> asyncio.Future[object] | None:
        """Start forwarding one request; None when it cannot be sent (link down)."""
        if link is None:
            return None
        try:
            return asyncio.ensure_future(forward(link))  # a future stays itself: no task
        except LinkDown:
            return None

    @staticmethod
    async def _reached(sent: asyncio.Future[object] | None) -> bool:
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
        """The peer's FLUSH is sent first (no task: its future), the local one runs
        meanwhile; done when both are (a peer FLUSH that fails took the link down)."""
        link = self._link.current
        sent: asyncio.Future[None] | None = None
        if engine.decide_flush(self._state) and link is not None:
            with contextlib.suppress(LinkDown):
                sent = link.start_flush()
        try:
            await self._local(lambda _f: local_flush(), False)
        except BaseException:
            if sent is not None:
                sent.add_done_callback(_retrieved)  # the local error is the answer
            raise
        if sent is not None:
            with contextlib.suppress(LinkDown):
                await sent


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
