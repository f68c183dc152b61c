"""The replication side of one agent: every replicated volume and group on it.

What the control API (PUT/GET/DELETE `/volumes/{id}/replication`, pause,
resume, group pause/resume) drives. A config change is decided by
plan.py (`plan_config_change`, which keeps the rules about epochs, repeated
calls, revoking a link export first and saving last); this module carries
the actions out, in order. Rules it keeps itself:

- a volume whose persisted role is primary starts *fenced* after an agent
  restart: user writes are refused until the controller confirms the config
  with an epoch >= its own — an old primary that comes back after a
  failover cannot accept a write before it learns it was demoted;
- a group pause/resume changes every member's state in one event-loop
  step, so all members stop at one instant;
- one change at a time (one lock), each applied completely before the next.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence

from openevs.agent.grants import validate_export_name
from openevs.agent.mirror import engine
from openevs.agent.mirror.changes import ChangeLog
from openevs.agent.mirror.config import BITMAP_SUFFIX, load_configs, remove_config, save_config, save_configs
from openevs.agent.mirror.groups import Groups
from openevs.agent.mirror.link_pool import LinkPools, LinkTls
from openevs.agent.mirror.plan import Action, plan_config_change
from openevs.agent.mirror.quorum import Quorum
from openevs.agent.mirror.ratelimit import TokenBucket
from openevs.agent.mirror.replica import Replica
from openevs.agent.mirror.sync import LiveView
from openevs.agent.mirror.user_export import MirroredExport
from openevs.agent.nbd.export import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FileExport, fallocate
from openevs.agent.pool import (
    FileVolumePool,
    InvalidVolumeRequest,
    PoolError,
    VolumeConflict,
    VolumeNotFound,
)
from openevs.contract import ErrorReason, ReplicationConfig, ReplicationRequest, ReplicationState
from openevs.domain.replication import Role
from openevs.security.pki import TlsFiles

log = logging.getLogger(__name__)


class StaleEpoch(PoolError):
    reason = ErrorReason.STALE_EPOCH


class ReplicationManager:
    def __init__(
        self,
        pool: FileVolumePool,
        drop_export: Callable[[str], Awaitable[None]],
        connection_count: Callable[[str], int],
        side: str = "",
        link_tls: LinkTls = None,
        tls: TlsFiles | None = None,  # this agent's certificate: for its calls to witnesses
        resync_rate_bytes_per_s: int = 0,
    ) -> None:
        self.pool = pool
        self._drop_export = drop_export
        self._connection_count = connection_count
        self.replicas: dict[str, Replica] = {}
        # the connections to peer agents, shared by the pairs; with `link_tls` (agent/nbd_tls.py)
        # mutual TLS to agents only
        self.link_pools = LinkPools(tls=link_tls)
        self.changes = ChangeLog()
        self._by_link_export: dict[str, str] = {}  # link export -> volume (the lookup per OPEN)
        # Set by the node: called before a volume's whole content is discarded (snapshots).
        self.before_discard: Callable[[str], Awaitable[None]] | None = None
        # Set by the node: a volume whose live content is partly outside its file (snapshots).
        self.live_chain: Callable[[str], LiveView | None] = lambda _v: None
        self.groups = Groups(self.replicas)
        self.quorum = Quorum(side, self._arbitration_changed, tls)
        self.quorum.still_needed = self._lease_needed
        self._lock = asyncio.Lock()
        # In put_many: the config files to write at the batch's group commit (None: not in one).
        self._deferred: list[tuple[str, ReplicationConfig]] | None = None
        self._cleared: list[Replica] = []  # and the replicas whose cleared bitmap to fdatasync
        # Volumes whose config file is not known to hold their config (a group commit
        # failed): the next put of the volume writes it again, even when nothing changes.
        self._unsaved: set[str] = set()
        self.resync_bucket = TokenBucket(resync_rate_bytes_per_s)  # the agent's limit, over all syncs

    def _new_replica(self, volume_id: str, config: ReplicationConfig) -> Replica:
        return Replica(
            volume_id, config, self.pool.path(volume_id), self.pool.root / f"{volume_id}{BITMAP_SUFFIX}",
            on_link_up=lambda r: self.groups.regroup(r.config.group_id),
            on_link_lost=self._link_lost,
            link_connections=self._connection_count,
            link_pools=self.link_pools,
            on_change=self.changes.touch,
            quorum=self.quorum,
            resync_bucket=self.resync_bucket,
            live=lambda: self.live_chain(volume_id),
        )  # fmt: skip

    # -- arbitration (quorum.py, solo.py) ----------------------------------

    def _link_lost(self, replica: Replica, reason: str) -> None:
        """Synchronous, inside the failing link's on_down: split the group, ask the witness."""
        self.groups.member_failed(replica, reason)
        for member in self._unit_members(replica):
            if (arbiter := member.arbiter) is not None:
                self.quorum.want(arbiter)
                break

    def _unit_members(self, replica: Replica) -> list[Replica]:
        gid = replica.config.group_id
        if gid is None:
            return [replica]
        return [self.replicas[v] for v in self.groups.members_or_none(gid) if v in self.replicas]

    def _replicas_of(self, key: str) -> list[Replica]:
        return [r for r in self.replicas.values() if (a := r.arbiter) is not None and a.key == key]

    def _arbitration_changed(self, key: str) -> None:
        for replica in self._replicas_of(key):
            replica.notify()

    def _lease_needed(self, key: str) -> bool:
        return any(
            engine.needs_lease(r.state) or r.gate.waiting for r in self._replicas_of(key)
        )  # fmt: skip

    def _arbitrate(self, replica: Replica, old: ReplicationConfig | None) -> None:
        """After a config change: watch the new unit, give back what this side no longer holds."""
        new = replica.arbiter
        previous = old.arbiter if old is not None and old.role is Role.PRIMARY else None
        if previous is not None and (new is None or (new.key, new.epoch) != (previous.key, previous.epoch)):
            shared = any(r is not replica and r.arbiter == previous for r in self.replicas.values())
            if not shared:
                self.quorum.release(previous)
        if new is not None:
            self.quorum.watch(new)
            if engine.needs_lease(replica.state):
                self.quorum.want(new)

    async def start(self) -> None:
        configs = await asyncio.to_thread(load_configs, self.pool.root)
        for volume_id, config in configs.items():
            if not self.pool.exists(volume_id):
                log.warning("replication config of missing volume %s ignored", volume_id)
                continue
            replica = self._new_replica(volume_id, config)
            # An old primary must not accept writes before the controller confirms it.
            replica.state.fenced = config.role is Role.PRIMARY
            self.replicas[volume_id] = replica
            self._index_link_export(replica, None)
            self.groups.join(replica)
            replica.start()
            log.info(
                "replication of %s: %s epoch %d%s, %d dirty regions", volume_id, config.role,
                config.epoch, " (fenced until confirmed)" if replica.state.fenced else "",
                len(replica.state.dirty),
            )  # fmt: skip

    async def close(self) -> None:
        for replica in list(self.replicas.values()):
            await replica.close()
        self.replicas.clear()
        await self.link_pools.close()
        await self.quorum.close()

    # -- lookups for the NBD side -----------------------------------------

    def link_export_volume(self, name: str) -> str | None:
        """The volume a secondary serves to its primary under export `name`."""
        volume_id = self._by_link_export.get(name)
        replica = self.replicas.get(volume_id) if volume_id is not None else None
        if (
            replica is not None
            and replica.state.role is Role.SECONDARY
            and replica.link_open
            and replica.config.link_export == name
        ):
            return volume_id
        return None

    def _index_link_export(self, replica: Replica, old: ReplicationConfig | None) -> None:
        previous = old.link_export if old is not None else None
        if previous and self._by_link_export.get(previous) == replica.volume_id:
            del self._by_link_export[previous]
        if replica.config.link_export:
            self._by_link_export[replica.config.link_export] = replica.volume_id

    def wrap(self, volume_id: str, inner: FileExport) -> MirroredExport:
        return MirroredExport(self.replicas, volume_id, inner)

    # -- control API ------------------------------------------------------

    def _replica(self, volume_id: str) -> Replica:
        replica = self.replicas.get(volume_id)
        if replica is None:
            self.pool.info(volume_id)  # VolumeNotFound when the volume is absent
            raise VolumeNotFound(f"volume {volume_id} is not replicated")
        return replica

    def describe(self, volume_id: str) -> ReplicationState:
        replica = self.replicas.get(volume_id)
        if replica is not None:
            return replica.describe()
        self.pool.info(volume_id)
        return ReplicationState.standalone(volume_id)

    def dirty_ranges(self, volume_id: str) -> list[tuple[int, int]]:
        return self._replica(volume_id).dirty_ranges()

    def group_members(self, group_id: str) -> list[str]:
        return self.groups.members(group_id)

    async def put(self, volume_id: str, request: ReplicationRequest) -> ReplicationState:
        async with self._lock:
            return await self._put(volume_id, request)

    async def put_many(self, items: Sequence[tuple[str, ReplicationRequest]]) -> list[ReplicationState]:
        """Each (volume, request) as its own `put`, in order, under one hold of the lock;
        the first refusal raises and leaves the ones before it applied. A group commit:
        each config takes effect as it comes, and its file is written at the end of the
        batch, before the answer (or the refusal): every file written, fsynced and
        renamed in one thread hop, then one fsync of the pool directory, so what the
        caller hears of is durable, as with one put at a time (a put's own change also
        takes effect before its file is saved). A failed group commit raises, and the
        next put of each of the batch's volumes writes its file again."""
        asked = time.perf_counter()
        async with self._lock:
            started = time.perf_counter()
            self._deferred = []
            try:
                # Each volume's existence checked in one thread hop for the batch, not one
                # each: under load (the agent answering many clients) a hop costs ~10 ms of
                # waiting for the event loop, more than the stat. A volume not found here
                # is checked again in its turn (its own put raises as it always did).
                present = await asyncio.to_thread(self._present, [v for v, _ in items])
                return [await self._put(v, request, checked=v in present) for v, request in items]
            finally:
                saves, self._deferred = self._deferred, None
                cleared, self._cleared = self._cleared, []
                committing = time.perf_counter()
                # The cleared bitmaps' fdatasyncs all at once (each in its thread), then
                # the config files (whatever the bitmaps did); both before the answer.
                try:
                    live = [r for r in cleared if self.replicas.get(r.volume_id) is r]
                    await asyncio.gather(*(r.sync_bitmap() for r in live))
                finally:
                    await asyncio.to_thread(self._group_commit, saves)
                done = time.perf_counter()
                log.info("replication batch of %d configs: %.3fs (waiting for the lock %.3fs, "
                         "group commit of %d files %.3fs)", len(items), done - asked,
                         started - asked, len(saves), done - committing)  # fmt: skip

    def _group_commit(self, saves: list[tuple[str, ReplicationConfig]]) -> None:
        """Write the batch's config files (a volume's last one wins: config.save_configs,
        their fsyncs concurrent, one directory fsync); on a failure none counts as saved."""
        try:
            if saves:
                save_configs(self.pool.root, saves)
        except BaseException:
            self._unsaved.update(v for v, _ in saves)
            raise
        self._unsaved.difference_update(v for v, _ in saves)

    async def _save(self, volume_id: str, config: ReplicationConfig) -> None:
        """A volume's config file: now, or at the group commit of the batch in progress."""
        if self._deferred is not None:
            self._deferred.append((volume_id, config))
            return
        await asyncio.to_thread(save_config, self.pool.root, volume_id, config)
        self._unsaved.discard(volume_id)

    def _present(self, volume_ids: list[str]) -> set[str]:
        present = set()
        for volume_id in volume_ids:
            try:
                self.pool.info(volume_id)
            except PoolError:
                continue
            present.add(volume_id)
        return present

    async def _put(
        self, volume_id: str, request: ReplicationRequest, *, checked: bool = False
    ) -> ReplicationState:
        """`checked`: the volume was found in the pool a moment ago (put_many), under the lock."""
        config, add = request.config(), request.add_dirty
        for offset, length in add:
            if offset < 0 or length < 0:
                raise InvalidVolumeRequest(f"add_dirty range ({offset}, {length}) is negative")
        if not checked:
            await asyncio.to_thread(self.pool.info, volume_id)
        if config.role is not Role.STANDALONE and config.link_export is not None:
            validate_export_name(config.link_export)
        current = self.replicas.get(volume_id)
        actions = plan_config_change(
            current.config if current is not None else None, config,
            initial_sync=request.initial_sync,
            fenced=current is not None and current.state.fenced,
        )  # fmt: skip
        try:
            await self._carry_out(volume_id, current, config, actions)
        finally:
            self.changes.touch(volume_id)
            if (changed := self.replicas.get(volume_id)) is not None:
                changed.notify()  # the sync and housekeeping wait for changes, not time
        replica = self.replicas.get(volume_id)
        if replica is not None and volume_id in self._unsaved and Action.SAVE not in actions:
            await self._save(volume_id, replica.config)  # an earlier group commit failed
        if replica is None:
            return self.describe(volume_id)  # standalone now
        if add:
            await replica.mark_ranges(add)
        return replica.describe()

    async def _carry_out(
        self, volume_id: str, current: Replica | None, new: ReplicationConfig, actions: list[Action]
    ) -> None:
        """Carry out a config change's actions in order (a new replica is closed
        again if one fails before it started)."""
        old = current.config if current is not None else None
        replica = current
        if replica is None and Action.START in actions:
            replica = self._new_replica(volume_id, new)
        try:
            for action in actions:
                if action is Action.REMOVE:
                    await self._remove(volume_id)
                    continue
                if action is Action.REFUSE_STALE_EPOCH:
                    assert old is not None
                    raise StaleEpoch(
                        f"volume {volume_id} is at epoch {old.epoch}; refusing epoch {new.epoch}"
                    )
                if action is Action.REFUSE_ROLE_CHANGE:
                    assert old is not None
                    raise VolumeConflict(
                        f"volume {volume_id} is {old.role} at epoch {old.epoch}:"
                        " a role change needs a higher epoch"
                    )
                assert replica is not None
                await self._change(action, replica, old, new)
                if action is Action.START:
                    current = replica
        except BaseException:
            if replica is not None and current is None:
                await replica.close()
            raise

    async def _change(
        self, action: Action, replica: Replica, old: ReplicationConfig | None, new: ReplicationConfig
    ) -> None:
        match action:
            case Action.UNFENCE:
                replica.unfence()
                log.info("replication of %s: unfenced at epoch %d", replica.volume_id, new.epoch)
            case Action.REVOKE_LINK_EXPORT:
                assert old is not None and old.link_export is not None
                replica.link_open = False
                await self._drop_export(old.link_export)
            case Action.DEMOTE:
                replica.demote()
            case Action.PROMOTE:
                replica.promote()
            case Action.CLEAR_BITMAP:
                if self._deferred is not None:  # a batch: synced together at its group commit
                    replica.clear_bitmap_unsynced()
                    self._cleared.append(replica)
                else:
                    await replica.clear_bitmap()
            case Action.PUNCH:
                await self._punch(replica)
            case Action.MARK_ALL_DATA:
                await replica.mark_all_data()
            case Action.SET_MIRRORING:
                replica.set_mirroring(new.mirroring)
            case Action.SAVE:
                await self._save(replica.volume_id, new)
                replica.config = new
                replica.link_open = True
                self._index_link_export(replica, old)
                self._arbitrate(replica, old)
            case Action.START:
                self.replicas[replica.volume_id] = replica
                self.groups.join(replica)
                replica.start()
            case Action.REGROUP:
                assert old is not None
                if old.group_id != new.group_id:
                    self.groups.leave(replica, old.group_id)
                    self.groups.join(replica)
                replica.update_link()
                self.groups.regroup(new.group_id)
            case _:
                raise AssertionError(f"{action} is not a change of a replica")

    async def _punch(self, replica: Replica) -> None:
        """Discard the whole DR disk (the initial copy skips what is zero)."""
        if self.before_discard is not None:
            await self.before_discard(replica.volume_id)

        def punch() -> None:
            fd = os.open(replica.image_path, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                if size:
                    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size)
                os.fsync(fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(punch)

    async def delete(self, volume_id: str) -> None:
        async with self._lock:
            await self._remove(volume_id)
            self.changes.touch(volume_id)

    async def _remove(self, volume_id: str) -> None:
        replica = self.replicas.pop(volume_id, None)
        if replica is None:
            await self._remove_config(volume_id)
            return
        self.groups.leave(replica, replica.config.group_id)
        link_export = replica.config.link_export
        if link_export and self._by_link_export.get(link_export) == volume_id:
            del self._by_link_export[link_export]
        if (arbiter := replica.arbiter) is not None and not any(
            r.arbiter == arbiter for r in self.replicas.values()
        ):
            self.quorum.release(arbiter)
        await replica.close()
        if link_export:
            await self._drop_export(link_export)
        replica.remove_bitmap()
        await self._remove_config(volume_id)

    async def _remove_config(self, volume_id: str) -> None:
        if self._deferred is not None:  # a save of it earlier in this batch must not bring it back
            self._deferred = [(v, c) for v, c in self._deferred if v != volume_id]
        await asyncio.to_thread(remove_config, self.pool.root, volume_id)
        self._unsaved.discard(volume_id)

    async def set_resync_rate(self, volume_id: str, rate_bytes_per_s: int) -> ReplicationState:
        """A pair's resync limit: saved with its config, read by its sync per chunk."""
        async with self._lock:
            replica = self._replica(volume_id)
            config = replica.config.replace(resync_rate_bytes_per_s=rate_bytes_per_s)
            await self._save(volume_id, config)
            replica.config = config
            return replica.describe()

    async def set_mirroring(self, volume_ids: list[str], on: bool) -> None:
        """Pause or resume: every member's state changes in this one step."""
        async with self._lock:
            replicas = [self._replica(v) for v in volume_ids]
            configs = [r.config.replace(mirroring=on) for r in replicas]  # all valid, or none applied
            for replica, config in zip(replicas, configs, strict=True):
                replica.set_mirroring(on)
                replica.config = config
            for replica in replicas:
                replica.update_link()  # notifies: the change log has them
            for gid in {r.config.group_id for r in replicas if r.config.group_id}:
                self.groups.regroup(gid)
            for replica in replicas:
                if not on and (arbiter := replica.arbiter) is not None:
                    self.quorum.want(arbiter)  # paused: writes the peer lacks need the grant
            for replica in replicas:
                await self._save(replica.volume_id, replica.config)
