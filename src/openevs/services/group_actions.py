"""Group actions done within the request: pause, sync and extend.

They answer 200 only when the agents have done them: pause stops every
member at one instant on the primary AZ's agent, sync resumes mirroring
(only dirty regions are copied), extend grows both disks of every listed
pair (services/pair_growth.py). The agent calls run after the commit of
what the request decided; an agent error answers 503.
"""

from __future__ import annotations

from openevs.db.models import ReplicationGroup, Volume
from openevs.domain import replication as rep
from openevs.domain.errors import InvalidInput, InvalidState
from openevs.domain.replication import GROUP_MACHINE, GroupTrigger, ReplicationStatus
from openevs.domain.volumes import check_size
from openevs.runtime import Runtime
from openevs.services import groups, pair_growth
from openevs.services.agent_errors import call_agent
from openevs.services.unit_of_work import UnitOfWork
from openevs.services.volumes import check_quota


def _check(group: ReplicationGroup, trigger: GroupTrigger) -> None:
    GROUP_MACHINE.next(group.status, trigger)


def pause_group(runtime: Runtime, project_id: str, group_id: str) -> None:
    with UnitOfWork(runtime) as uow:
        group = groups.get_group(uow.session, project_id, group_id)
        _check(group, GroupTrigger.PAUSE)
        if not groups.members(uow.session, group.id):
            raise InvalidState("the group has no replication pairs to pause")
        station = group.priority_station
        uow.after_commit(lambda: call_agent(runtime, station, lambda a: a.pause_group(group_id)))
        uow.wake_reconciler()


def sync_group(runtime: Runtime, project_id: str, group_id: str) -> None:
    with UnitOfWork(runtime) as uow:
        group = groups.get_group(uow.session, project_id, group_id)
        _check(group, GroupTrigger.SYNC)
        if not groups.members(uow.session, group.id):
            raise InvalidState("the group has no replication pairs to synchronize")
        station = group.priority_station
        if group.status != rep.GroupStatus.AVAILABLE:  # error_reversing: recovered by a sync
            groups.transition(uow.session, group, GroupTrigger.SYNC, failure_detail=None)
        uow.after_commit(lambda: call_agent(runtime, station, lambda a: a.resume_group(group_id)))
        uow.wake_reconciler()


def extend_group(runtime: Runtime, project_id: str, group_id: str, sizes: list[tuple[str, int]]) -> None:
    """Claim the new sizes (a concurrent extend of a claimed pair is refused 409)
    and commit, grow the disks, then record the sizes; a failed growth releases
    its claims and answers 503."""
    if not sizes:
        raise InvalidInput("name at least one replication pair to extend")
    with UnitOfWork(runtime) as uow:
        session = uow.session
        group = groups.get_group(session, project_id, group_id)
        _check(group, GroupTrigger.EXTEND)
        if group.replication_status == ReplicationStatus.ERROR:
            raise InvalidState("the group's replication_status is error; it cannot be extended")
        pairs = {p.id: p for p in groups.members(session, group.id)}
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
        check_quota(session, uow.settings, project_id, 0, extra_gb)
        claims = []
        for pair_id, new_size in sizes:
            pair = pairs[pair_id]
            prod, dr = session.get(Volume, pair.production_volume_id), session.get(Volume, pair.dr_volume_id)
            if prod is None or dr is None:
                raise InvalidState(f"a disk of replication pair {pair_id} is gone")
            claims.append(pair_growth.claim(session, pair, prod, dr, new_size))
    pair_growth.carry_out(runtime, claims)
