"""The replication side of one agent: every replicated volume and group on it.

What the control API (PUT/GET/DELETE `/volumes/{id}/replication`, pause,
resume, group pause/resume) drives. Rules it keeps:

- a config is applied completely (data discarded, link export granted or
  revoked, bitmap reset) before it is persisted, and the same config again
  is a no-op, so the controller may repeat any call;
- a lower epoch than the volume's is refused (stale controller state);
  a role change needs a higher epoch;
- a volume whose persisted role is primary starts *fenced* after an agent
  restart: user writes are refused until the controller confirms the config
  with an epoch >= its own — an old primary that comes back after a
  failover cannot accept a write before it learns it was demoted;
- a group pause/resume changes every member's state in one event-loop
  step, so all members stop at one instant.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from openevs.agent.exports import validate_export_name
from openevs.agent.mirror import engine
from openevs.agent.mirror.config import BITMAP_SUFFIX, load_configs, remove_config, save_config
from openevs.agent.mirror.engine import GroupState
from openevs.agent.mirror.export import MirroredExport
from openevs.agent.mirror.replica import Replica
from openevs.agent.nbd.export import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate
from openevs.agent.pool import (
    FileVolumePool,
    InvalidVolumeRequest,
    PoolError,
    VolumeConflict,
    VolumeNotFound,
)
from openevs.contract import ErrorReason, ReplicationConfig, ReplicationRequest, ReplicationState
from openevs.domain.replication import Role

log = logging.getLogger(__name__)


class StaleEpoch(PoolError):
    reason = ErrorReason.STALE_EPOCH


class ReplicationManager:
    def __init__(
        self,
        pool: FileVolumePool,
        drop_export: Callable[[str], Awaitable[None]],
        connection_count: Callable[[str], int],
    ) -> None:
        self.pool = pool
        self._drop_export = drop_export
        self._connection_count = connection_count
        self.replicas: dict[str, Replica] = {}
        self.groups: dict[str, GroupState] = {}
        self._lock = asyncio.Lock()

    def _bitmap_path(self, volume_id: str) -> os.PathLike[str]:
        return self.pool.root / f"{volume_id}{BITMAP_SUFFIX}"

    def _new_replica(self, volume_id: str, config: ReplicationConfig) -> Replica:
        return Replica(self, volume_id, config, self.pool.path(volume_id), self._bitmap_path(volume_id))

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
            self._join_group(replica)
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

    # -- lookups for the NBD side -----------------------------------------

    def link_export_volume(self, name: str) -> str | None:
        """The volume a secondary serves to its primary under export `name`."""
        for volume_id, replica in self.replicas.items():
            if (
                replica.state.role is Role.SECONDARY
                and replica.link_open
                and replica.config.link_export == name
            ):
                return volume_id
        return None

    def wrap(self, volume_id: str, inner: Any) -> MirroredExport:
        return MirroredExport(self, volume_id, inner)

    def link_connected(self, replica: Replica) -> bool:
        name = replica.config.link_export
        return bool(name) and self._connection_count(name or "") > 0

    # -- groups -----------------------------------------------------------

    def _join_group(self, replica: Replica) -> None:
        gid = replica.config.group_id
        if gid is None:
            replica.state.group_split = False
            return
        group = self.groups.setdefault(gid, GroupState(gid))
        group.members.add(replica.volume_id)
        self._regroup(group)

    def _leave_group(self, replica: Replica, gid: str | None) -> None:
        if gid is None or gid not in self.groups:
            return
        group = self.groups[gid]
        group.members.discard(replica.volume_id)
        replica.state.group_split = False
        if not group.members:
            del self.groups[gid]
        else:
            self._regroup(group)

    def _members(self, group: GroupState) -> list[Replica]:
        return [self.replicas[m] for m in sorted(group.members) if m in self.replicas]

    def _ready(self, replica: Replica) -> bool:
        st = replica.state
        return st.role is Role.PRIMARY and st.mirroring and st.link_up and not st.fenced

    def _regroup(self, group: GroupState) -> None:
        """Split the group unless every member can forward; rejoin it when all can.

        Only primaries count: a member demoted by a switchover (a secondary now,
        until its pair's other half joins the group on the other agent) must
        not keep the remaining primaries split."""
        ready = {r.volume_id: self._ready(r) for r in self._members(group) if r.state.role is Role.PRIMARY}
        if not all(ready.values()):
            group.split = True
        else:
            group.maybe_join(ready)
        for member in self._members(group):
            member.state.group_split = group.split
            member._notify()

    def member_failed(self, replica: Replica, reason: str) -> None:
        """A member's link went down: the whole group stops forwarding, now."""
        gid = replica.config.group_id
        group = self.groups.get(gid) if gid else None
        if group is None:
            return
        if not group.split:
            log.warning("group %s split: %s: %s", gid, replica.volume_id, reason)
        group.forward_failed()
        for member in self._members(group):
            member.state.group_split = True
            member._notify()

    def link_changed(self, replica: Replica) -> None:
        gid = replica.config.group_id
        if gid and gid in self.groups:
            self._regroup(self.groups[gid])

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
        replica = self._replica(volume_id)
        st = replica.state
        return engine.merge_ranges(st.dirty | st.copying, replica.size_bytes)

    async def put(self, volume_id: str, request: ReplicationRequest) -> ReplicationState:
        config, initial_sync, add = request.config(), request.initial_sync, request.add_dirty
        for offset, length in add:
            if offset < 0 or length < 0:
                raise InvalidVolumeRequest(f"add_dirty range ({offset}, {length}) is negative")
        async with self._lock:
            await asyncio.to_thread(self.pool.info, volume_id)
            if config.role is Role.STANDALONE:
                await self._remove(volume_id)
                return self.describe(volume_id)
            if config.link_export is not None:
                validate_export_name(config.link_export)
            replica = self.replicas.get(volume_id)
            if replica is None:
                await self._create(volume_id, config, initial_sync)
            else:
                await self._update(replica, config, initial_sync)
            replica = self.replicas[volume_id]
            if add:
                await replica.mark_ranges(add)
            return replica.describe()

    async def _create(self, volume_id: str, config: ReplicationConfig, initial: bool) -> None:
        replica = self._new_replica(volume_id, config)
        try:
            if config.role is Role.SECONDARY:
                await replica.clear_bitmap()
                if initial:
                    await self._punch(replica)
            elif initial:
                replica.peer_blank = True
                await replica.mark_all_data()
            await asyncio.to_thread(save_config, self.pool.root, volume_id, config)
        except BaseException:
            await replica.close()
            raise
        self.replicas[volume_id] = replica
        self._join_group(replica)
        replica.start()

    async def _update(self, replica: Replica, config: ReplicationConfig, initial: bool) -> None:
        old = replica.config
        st = replica.state
        if config.epoch < old.epoch:
            raise StaleEpoch(
                f"volume {replica.volume_id} is at epoch {old.epoch}; refusing epoch {config.epoch}"
            )
        if config == old:
            if st.fenced:
                st.fenced = False  # the controller confirmed this primary
                log.info("replication of %s: unfenced at epoch %d", replica.volume_id, old.epoch)
                self._after_change(replica, old.group_id)
            return
        if config.epoch == old.epoch and config.role is not old.role:
            raise VolumeConflict(
                f"volume {replica.volume_id} is {old.role} at epoch {old.epoch}:"
                " a role change needs a higher epoch"
            )
        if old.role is Role.SECONDARY and (
            config.role is not Role.SECONDARY
            or config.link_export != old.link_export
            or config.epoch != old.epoch
        ):
            # The old link is revoked before anything else changes.
            replica.link_open = False
            assert old.link_export is not None
            await self._drop_export(old.link_export)
        if config.role is Role.SECONDARY:
            replica.link_open = False  # granted only once the data is ready
            st.role = Role.SECONDARY
            st.fenced = False
            replica.update_link()  # a demoted primary stops forwarding (keeps its bitmap)
            if initial:
                await replica.clear_bitmap()
                await self._punch(replica)
        else:
            if old.role is Role.SECONDARY:
                await replica.clear_bitmap()  # promoted: track writes from now on
            st.role = Role.PRIMARY
            st.fenced = False
            if initial:
                replica.peer_blank = True
                await replica.mark_all_data()
        st.mirroring = config.mirroring
        await asyncio.to_thread(save_config, self.pool.root, replica.volume_id, config)
        replica.config = config
        replica.link_open = True
        self._after_change(replica, old.group_id)

    def _after_change(self, replica: Replica, old_group: str | None) -> None:
        if old_group != replica.config.group_id:
            self._leave_group(replica, old_group)
            self._join_group(replica)
        replica.update_link()
        gid = replica.config.group_id
        if gid and gid in self.groups:
            self._regroup(self.groups[gid])

    async def _punch(self, replica: Replica) -> None:
        """Discard the whole DR disk (the initial copy skips what is zero)."""

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

    async def _remove(self, volume_id: str) -> None:
        replica = self.replicas.pop(volume_id, None)
        if replica is None:
            await asyncio.to_thread(remove_config, self.pool.root, volume_id)
            return
        self._leave_group(replica, replica.config.group_id)
        link_export = replica.config.link_export
        await replica.close()
        if link_export:
            await self._drop_export(link_export)
        replica.bitmap.remove()
        await asyncio.to_thread(remove_config, self.pool.root, volume_id)

    async def set_mirroring(self, volume_ids: list[str], on: bool) -> None:
        """Pause or resume: every member's state changes in this one step."""
        async with self._lock:
            replicas = [self._replica(v) for v in volume_ids]
            configs = [r.config.replace(mirroring=on) for r in replicas]  # all valid, or none applied
            for replica, config in zip(replicas, configs, strict=True):
                replica.state.mirroring = on
                replica.config = config
            for replica in replicas:
                replica.update_link()
            for gid in {r.config.group_id for r in replicas if r.config.group_id}:
                if gid in self.groups:
                    self._regroup(self.groups[gid])
            for replica in replicas:
                await asyncio.to_thread(save_config, self.pool.root, replica.volume_id, replica.config)

    def group_members(self, group_id: str) -> list[str]:
        group = self.groups.get(group_id)
        if group is None or not group.members:
            raise VolumeNotFound(f"no volume of group {group_id} on this agent")
        return sorted(group.members)
