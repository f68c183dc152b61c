"""The consistency groups on this agent: each one's members split and rejoin as one.

A group is one unit of failure (DESIGN.md section 3): if any member's link
breaks, every member stops forwarding before any member acknowledges
another write, so the DR disks always form one crash-consistent point in
time. The decisions are engine.GroupState's; this module applies them to
the members.

Rules this module keeps:

- `member_failed` runs synchronously inside the failing link's `on_down`
  (replica_link.py), so the whole group is split before the failing write
  is acknowledged;
- a group forwards again only when every primary member is ready
  (engine.group_ready); a member demoted by a switchover (a secondary now,
  until its pair's other half joins the group on the other agent) does not
  keep the remaining primaries split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from openevs.agent.mirror import engine
from openevs.agent.mirror.engine import GroupState
from openevs.agent.mirror.replica import Replica
from openevs.agent.pool import VolumeNotFound
from openevs.domain.replication import Role

log = logging.getLogger(__name__)


class Groups:
    def __init__(self, replicas: Mapping[str, Replica]) -> None:
        self._replicas = replicas
        self._groups: dict[str, GroupState] = {}

    def members(self, group_id: str) -> list[str]:
        group = self._groups.get(group_id)
        if group is None or not group.members:
            raise VolumeNotFound(f"no volume of group {group_id} on this agent")
        return sorted(group.members)

    def join(self, replica: Replica) -> None:
        gid = replica.config.group_id
        if gid is None:
            replica.state.group_split = False
            return
        group = self._groups.setdefault(gid, GroupState(gid))
        group.members.add(replica.volume_id)
        self._regroup(group)

    def leave(self, replica: Replica, gid: str | None) -> None:
        if gid is None or gid not in self._groups:
            return
        group = self._groups[gid]
        group.members.discard(replica.volume_id)
        replica.state.group_split = False
        if not group.members:
            del self._groups[gid]
        else:
            self._regroup(group)

    def regroup(self, gid: str | None) -> None:
        """Split the group unless every primary member can forward; rejoin it when all can."""
        group = self._groups.get(gid) if gid else None
        if group is not None:
            self._regroup(group)

    def members_or_none(self, group_id: str) -> list[str]:
        group = self._groups.get(group_id)
        return sorted(group.members) if group is not None else []

    def member_failed(self, replica: Replica, reason: str) -> None:
        """A member's link went down: the whole group stops forwarding, now."""
        gid = replica.config.group_id
        group = self._groups.get(gid) if gid else None
        if group is None:
            return
        if not group.split:
            log.warning("group %s split: %s: %s", gid, replica.volume_id, reason)
        group.forward_failed()
        for member in self._members(group):
            member.set_group_split(True)

    def _members(self, group: GroupState) -> list[Replica]:
        return [self._replicas[m] for m in sorted(group.members) if m in self._replicas]

    def _regroup(self, group: GroupState) -> None:
        members = self._members(group)
        split = group.regroup(
            {r.volume_id: engine.group_ready(r.state) for r in members if r.state.role is Role.PRIMARY}
        )
        for member in members:
            member.set_group_split(split)
