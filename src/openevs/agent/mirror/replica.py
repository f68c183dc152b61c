"""One replicated volume on this agent: its parts, put together.

The parts, each with the rules it keeps in its own docstring:

- `ActivityLog` (activity.py): the bits on disk of what may differ from the
  peer, hot extents, and clearing them only after a peer FLUSH;
- `WritePath` (writes.py): what a user's write or flush does;
- `Sync` (sync.py): copying the dirty regions to the peer;
- `ReplicaLink` (replica_link.py): the link to the peer, opened, retired
  and lost (the group splits synchronously).

They share the volume's `MirrorState` (engine.py, what every decision
reads), one change signal and one task set (tasks.py). The manager drives a
replica through the methods below and hears about its link through the
callbacks it passes in; a replica knows nothing of the manager.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable

from openevs.agent.mirror import engine
from openevs.agent.mirror.activity import ActivityLog
from openevs.agent.mirror.engine import MirrorState
from openevs.agent.mirror.link import LinkDown, PeerLink
from openevs.agent.mirror.link_pool import LinkPools
from openevs.agent.mirror.meter import lag_s
from openevs.agent.mirror.quorum import Quorum
from openevs.agent.mirror.ratelimit import TokenBucket
from openevs.agent.mirror.replica_link import ReplicaLink
from openevs.agent.mirror.solo import SoloGate
from openevs.agent.mirror.sync import LiveView, Sync
from openevs.agent.mirror.tasks import Changes, TaskSet
from openevs.agent.mirror.writes import ForwardOp, LocalOp, WritePath
from openevs.agent.pool import data_extents
from openevs.contract import Arbiter, ArbitrationState, ReplicationConfig, ReplicationState, SyncProgress
from openevs.domain.replication import ReplicationStatus, Role

__all__ = ["ForwardOp", "LocalOp", "Replica"]


class Replica:
    def __init__(
        self, volume_id: str, config: ReplicationConfig,
        image_path: os.PathLike[str] | str, bitmap_path: os.PathLike[str] | str, *,
        on_link_up: Callable[[Replica], None],
        on_link_lost: Callable[[Replica, str], None],
        link_connections: Callable[[str], int],
        link_pools: LinkPools,
        quorum: Quorum,
        resync_bucket: TokenBucket | None = None,
        on_change: Callable[[str], None] = lambda _v: None,
        live: Callable[[], LiveView | None] = lambda: None,
    ) -> None:  # fmt: skip
        self.volume_id = volume_id
        self._live = live
        self.config = config
        self.state = st = MirrorState(role=config.role, mirroring=config.mirroring)
        self.image_path = os.fspath(image_path)
        # The data file, read-only, for a primary's sync and size: opened when first
        # needed, so a secondary holds only its bitmap (and the link's writable file).
        self._rfd = -1
        self._link_connections = link_connections
        self.link_open = True  # secondary: the link export may be opened
        self._changes = changes = Changes(lambda: on_change(volume_id))
        self._tasks = tasks = TaskSet()
        self.activity = ActivityLog(st, bitmap_path, changes, self._size)
        st.dirty = self.activity.load()  # on start, every persisted bit is dirty
        self.link = ReplicaLink(
            volume_id, st, self.activity, changes, tasks, self._size, link_pools,
            on_up=lambda: on_link_up(self), on_lost=lambda reason: on_link_lost(self, reason),
        )  # fmt: skip
        self.sync = Sync(
            volume_id, st, self.activity, changes, self._current_link, self._data_fd, self._size,
            pair_rate=lambda: self.config.resync_rate_bytes_per_s, agent_bucket=resync_bucket,
            live=live,
        )  # fmt: skip
        self._quorum = quorum
        self.gate = SoloGate(volume_id, st, quorum, self._arbiter, changes, self._peer_flush)
        self.writes = WritePath(volume_id, st, self.activity, self.link, changes, tasks, self.gate)
        # The export calls these per request: no extra frame in between.
        self.user_io = self.writes.user_io
        self.user_flush = self.writes.user_flush

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        self._tasks.run(self.sync.run())
        self._tasks.run(self.activity.housekeeping(self._current_link))
        self.update_link()

    async def close(self) -> None:
        self.link.closed = True
        self._changes.notify()
        await self._tasks.cancel_all()
        await self.link.close()
        self.state.copying.clear()
        self._changes.notify()
        self.activity.close()
        if self._rfd >= 0:
            os.close(self._rfd)
            self._rfd = -1

    def _data_fd(self) -> int:
        if self._rfd < 0:
            self._rfd = os.open(self.image_path, os.O_RDONLY)
        return self._rfd

    def _size(self) -> int:
        if self._rfd >= 0 or self.state.role is Role.PRIMARY:
            return os.fstat(self._data_fd()).st_size
        return os.stat(self.image_path).st_size

    @property
    def size_bytes(self) -> int:
        return self._size()

    def _current_link(self) -> PeerLink | None:
        return self.link.current

    def _arbiter(self) -> Arbiter | None:
        """Who arbitrates this volume's writes alone (None: static priority)."""
        return self.config.arbiter if self.state.role is Role.PRIMARY else None

    @property
    def arbiter(self) -> Arbiter | None:
        return self._arbiter()

    async def _peer_flush(self) -> bool:
        link = self.link.current
        if link is None:
            return False
        try:
            await link.flush()
        except LinkDown:
            return False
        return True

    def notify(self) -> None:
        """Wake whatever waits on this volume's state (after an outside change: the witness)."""
        self._changes.notify()

    @property
    def io_error(self) -> bool:
        return self.activity.io_error or self.writes.io_error or self.sync.io_error

    # -- what the manager changes -----------------------------------------

    def update_link(self) -> None:
        """Start or stop the link to match the config and state."""
        self.link.update(self.config.peer)

    def set_group_split(self, split: bool) -> None:
        self.state.group_split = split
        self._changes.notify()

    def unfence(self) -> None:
        self.state.fenced = False

    def promote(self) -> None:
        self.state.role = Role.PRIMARY
        self.state.fenced = False

    def demote(self) -> None:
        """A secondary: writes refused, the link export closed until the change is
        saved, and a demoted primary stops forwarding (it keeps its bitmap)."""
        self.link_open = False
        self.state.role = Role.SECONDARY
        self.state.fenced = False
        self.update_link()

    def set_mirroring(self, on: bool) -> None:
        self.state.mirroring = on

    async def mark_ranges(self, ranges: Iterable[tuple[int, int]]) -> None:
        regions = engine.regions_of_ranges(ranges)
        self.state.dirty |= regions
        await self.activity.persist(regions)
        self._changes.notify()

    async def mark_all_data(self) -> None:
        """The initial copy: every data extent is dirty, and the peer is blank (it
        was punched), so all-zero chunks need no request."""
        self.sync.peer_blank = True
        live = self._live()
        pending = live.pending_ranges() if live is not None else []
        extents = await asyncio.to_thread(data_extents, self._data_fd(), 0, self.size_bytes)
        live = self._live()  # regions still pending (a snapshot overlay) are data too
        pending += live.pending_ranges() if live is not None else []
        await self.mark_ranges(extents + pending)

    async def clear_bitmap(self) -> None:
        await self.activity.clear()

    def clear_bitmap_unsynced(self) -> None:
        self.activity.clear_unsynced()

    async def sync_bitmap(self) -> None:
        await self.activity.bitmap.sync()

    def remove_bitmap(self) -> None:
        self.activity.remove()

    # -- reporting --------------------------------------------------------

    def dirty_ranges(self) -> list[tuple[int, int]]:
        st = self.state
        return engine.merge_ranges(st.dirty | st.copying, self.size_bytes)

    def describe(self) -> ReplicationState:
        st = self.state
        size = self.size_bytes
        sync = self.sync
        status = engine.status(st, io_error=self.io_error, sync_running=sync.running)
        remaining = engine.dirty_bytes(st.dirty, size) + engine.dirty_bytes(st.copying, size)
        now = time.monotonic()
        sync.meter.observe(now, sync.resynced_bytes_total, remaining)
        lag, st.behind_since = lag_s(st.behind_since, remaining, now)
        eta = sync.meter.eta_s(now)
        progress = None
        if status is ReplicationStatus.COPYING:
            progress = SyncProgress(copied_bytes=sync.copied_bytes, total_bytes=sync.copied_bytes + remaining)
        cfg = self.config
        if st.role is Role.PRIMARY:
            link_up = st.link_up
        else:
            link_up = bool(cfg.link_export) and self._link_connections(cfg.link_export or "") > 0
        return ReplicationState(
            volume_id=self.volume_id,
            role=cfg.role,
            epoch=cfg.epoch,
            pair_id=cfg.pair_id,
            group_id=cfg.group_id,
            peer=cfg.peer,
            link_export_set=cfg.link_export is not None,
            replication_status=status,
            link_up=link_up,
            link_error=self.link.last_error or None,
            mirroring=st.mirroring,
            fenced=st.fenced or st.role is Role.SECONDARY,
            group_split=st.group_split,
            dirty_bytes=remaining,
            sync=progress,
            resynced_bytes_total=sync.resynced_bytes_total,
            resync_rate_bytes_per_s=round(sync.meter.rate_bytes_per_s(now), 1),
            resync_eta_s=None if eta is None else round(eta, 1),
            lag_s=round(lag, 3),
            io_error=self.io_error,
            arbitration=self._arbitration(),
        )

    def _arbitration(self) -> ArbitrationState | None:
        arbiter = self._arbiter()
        if arbiter is None:
            return None
        gate = self.gate
        return self._quorum.state(arbiter).replace(
            suspended=gate.waiting > 0,
            suspended_writes=gate.waiting,
            suspended_for_s=round(gate.suspended_for_s, 3),
        )
