"""Group actions done within the request: pause, sync and extend.

They answer 200 only when the agents have done them: pause stops every
member at one instant on the primary AZ's agent, sync resumes mirroring
(only dirty regions are copied), extend grows both disks of every listed
pair (DR side first, so a primary never forwards past its peer's end).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openevs.contract import AgentRequestFailed, AgentUnavailable
from openevs.db.cas import compare_and_set
from openevs.db.models import ReplicationPair, Volume, utcnow
from openevs.domain import replication as rep
from openevs.domain.errors import Conflict, InvalidInput, InvalidState, ServiceUnavailable
from openevs.domain.replication import GroupTrigger, ReplicationStatus
from openevs.domain.states import next_state
from openevs.domain.volumes import GIB, check_size
from openevs.runtime import Runtime
from openevs.services import groups
from openevs.services.volumes import _check_quota


def _agent_call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except AgentUnavailable as exc:
        raise ServiceUnavailable(
            f"the primary AZ's storage agent cannot be reached: {exc}", code=rep.FD_LINK
        ) from exc
    except AgentRequestFailed as exc:
        raise ServiceUnavailable(f"the storage agent refused: {exc}", code=rep.FD_INTERNAL) from exc


def _check(group: Any, trigger: GroupTrigger) -> None:
    next_state(rep.GROUP_TRANSITIONS, "replication consistency group", group.status, trigger)


def pause_group(runtime: Runtime, project_id: str, group_id: str) -> None:
    with runtime.db.session() as session:
        group = groups.get_group(session, project_id, group_id)
        _check(group, GroupTrigger.PAUSE)
        if not groups.members(session, group.id):
            raise InvalidState("the group has no replication pairs to pause")
        station = group.priority_station
    _agent_call(runtime.agent(station).pause_group, group_id)
    runtime.kick()


def sync_group(runtime: Runtime, project_id: str, group_id: str) -> None:
    with runtime.db.session() as session:
        group = groups.get_group(session, project_id, group_id)
        _check(group, GroupTrigger.SYNC)
        if not groups.members(session, group.id):
            raise InvalidState("the group has no replication pairs to synchronize")
        station = group.priority_station
        if group.status != rep.GroupStatus.AVAILABLE:  # error_reversing: recovered by a sync
            groups.transition(session, group, GroupTrigger.SYNC, failure_detail=None)
    _agent_call(runtime.agent(station).resume_group, group_id)
    runtime.kick()


def extend_group(runtime: Runtime, project_id: str, group_id: str, sizes: list[tuple[str, int]]) -> None:
    if not sizes:
        raise InvalidInput("name at least one replication pair to extend")
    with runtime.db.session() as session:
        group = groups.get_group(session, project_id, group_id)
        _check(group, GroupTrigger.EXTEND)
        if group.replication_status == ReplicationStatus.ERROR:
            raise InvalidState("the group's replication_status is error; it cannot be extended")
        pairs = {p.id: p for p in groups.members(session, group.id)}
        plan = []
        extra_gb = 0
        for pair_id, new_size in sizes:
            pair = pairs.get(pair_id)
            if pair is None:
                raise InvalidInput(f"replication pair {pair_id[:64]} is not a member of this group")
            if new_size <= pair.volume_size_gb:
                raise InvalidInput(
                    f"new_size of pair {pair_id} ({new_size} GB) must be larger than {pair.volume_size_gb} GB"
                )
            check_size(new_size)
            extra_gb += 2 * (new_size - pair.volume_size_gb)
            prod = session.get(Volume, pair.production_volume_id)
            dr = session.get(Volume, pair.dr_volume_id)
            assert prod is not None and dr is not None
            plan.append((pair.id, new_size, prod.id, prod.availability_zone, dr.id, dr.availability_zone))
        _check_quota(session, runtime.settings, project_id, 0, extra_gb)
        # Claim the new sizes, and hold the claim (the transaction) until the disks
        # have grown: a concurrent extend waits, then is refused (409) instead
        # of asking an agent to shrink a disk another request just grew.
        for pair_id, new_size, *_ in plan:
            pair = pairs[pair_id]
            if not compare_and_set(
                session, ReplicationPair, pair_id, pair.status, pair.status,
                unchanged={"volume_size_gb": pair.volume_size_gb}, volume_size_gb=new_size,
            ):  # fmt: skip
                raise Conflict(f"replication pair {pair_id} changed concurrently; retry the request")
        for _, new_size, prod_id, prod_az, dr_id, dr_az in plan:
            _agent_call(runtime.agent(dr_az).grow_volume, dr_id, new_size * GIB)
            _agent_call(runtime.agent(prod_az).grow_volume, prod_id, new_size * GIB)
        now = utcnow()
        for _, new_size, prod_id, _, dr_id, _ in plan:
            for vid in (prod_id, dr_id):
                vol = session.get(Volume, vid)
                if vol is not None:
                    vol.size_gb = vol.target_size_gb = new_size
                    vol.updated_at = now
