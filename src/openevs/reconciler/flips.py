"""Role flips of a consistency group's members, shared by failover and
switchover: demote an old primary, promote its DR disk, and swap the roles
in the rows once every member is flipped.

The plan of a flip (new epoch and link secret per member) was fixed in the
group row when the request was accepted, so a resumed pass carries out the
same plan; a member whose row already has the plan's epoch is done.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from openevs.contract import AgentRequestFailed, AgentUnavailable, Peer, ReplicationRequest
from openevs.contract_plans import FailoverPlan, PairFlip, Plan, SwitchoverPlan, load_plan
from openevs.db.cas import compare_and_set
from openevs.db.models import ReplicationGroup, ReplicationPair, Volume, utcnow
from openevs.domain import replication as rep
from openevs.domain.replication import GROUP_MACHINE, GroupTrigger, Role
from openevs.reconciler.driver import StepFailed
from openevs.reconciler.roles import arbiter_for, az_of, nbd_address, set_role
from openevs.runtime import Runtime
from openevs.services.connections import regrant_exports
from openevs.services.replications import open_link

log = logging.getLogger(__name__)


def members(runtime: Runtime, group_id: str) -> list[ReplicationPair]:
    with runtime.db.session() as session:
        return list(session.scalars(select(ReplicationPair).where(ReplicationPair.group_id == group_id)))


def plan_of(group: ReplicationGroup) -> Plan | None:
    return load_plan(group.pending)


def flips(group: ReplicationGroup) -> dict[str, PairFlip]:
    plan = plan_of(group)
    if not isinstance(plan, FailoverPlan | SwitchoverPlan):
        raise StepFailed(f"group {group.id} is {group.status} without a flip plan", rep.FD_INTERNAL)
    return dict(plan.pairs)


def to_flip(
    runtime: Runtime, group_id: str, plans: dict[str, PairFlip]
) -> list[tuple[ReplicationPair, PairFlip]]:
    """The members not flipped yet (their row's epoch is below the plan's)."""
    pairs = {p.id: p for p in members(runtime, group_id)}
    return [
        (pairs[pid], flip) for pid, flip in plans.items() if pid in pairs and pairs[pid].epoch < flip.epoch
    ]


def group_epoch_after(group: ReplicationGroup) -> int:
    """The group's arbitration epoch once its flip plan is carried out."""
    plan = plan_of(group)
    planned = plan.epoch if isinstance(plan, FailoverPlan | SwitchoverPlan) else 0
    return planned or group.epoch + 1


def promote(
    runtime: Runtime, pair: ReplicationPair, flip: PairFlip, mirroring: bool, unit_epoch: int,
    arbitrated: bool = True,
) -> None:  # fmt: skip
    """The DR disk becomes primary; its arbiter is at `unit_epoch` (the group's);
    `arbitrated=False`: none (a forced failover that could not reach the witness)."""
    peer_az = az_of(runtime, flip.old_primary)
    host, port = nbd_address(runtime, peer_az)
    arbiter = None
    if arbitrated:
        arbiter = arbiter_for(runtime, pair, flip.new_primary, flip.old_primary, unit_epoch)
    request = ReplicationRequest(
        role=Role.PRIMARY,
        epoch=flip.epoch,
        pair_id=pair.id,
        group_id=pair.group_id,
        peer=Peer(host=host, port=port, export=open_link(runtime.sealer, flip.link_export), az=peer_az),
        mirroring=mirroring,
        arbiter=arbiter,
    )
    set_role(runtime, flip.new_primary, request, primary=False)


def demote(runtime: Runtime, pair: ReplicationPair, flip: PairFlip) -> None:
    request = ReplicationRequest(
        role=Role.SECONDARY,
        epoch=flip.epoch,
        pair_id=pair.id,
        group_id=pair.group_id,
        link_export=open_link(runtime.sealer, flip.link_export),
    )
    set_role(runtime, flip.old_primary, request, primary=True)


def commit_flip(runtime: Runtime, group: ReplicationGroup, trigger: GroupTrigger) -> None:
    """Swap the roles in the rows (priority_station moves) and end the transition,
    in one transaction; then re-grant the disks' exports with their new access."""
    plans = flips(group)
    new_station = group.priority_station
    new = GROUP_MACHINE.next(group.status, trigger)
    with runtime.db.session() as session:
        for pair_id, flip in plans.items():
            vol = session.get(Volume, flip.new_primary)
            if vol is None:
                continue
            new_station = vol.availability_zone
            session.execute(
                update(ReplicationPair)
                .where(ReplicationPair.id == pair_id, ReplicationPair.epoch < flip.epoch)
                .values(
                    production_volume_id=flip.new_primary,
                    dr_volume_id=flip.old_primary,
                    epoch=flip.epoch,
                    link_export=flip.link_export,
                    priority_station=new_station,
                    updated_at=utcnow(),
                )
            )
        won = compare_and_set(
            session, ReplicationGroup, group.id, group.status, new,
            pending={}, priority_station=new_station, failure_detail=None,
            epoch=group_epoch_after(group),
        )  # fmt: skip
        if not won:
            session.rollback()
    if not won:
        log.info("group %s: moved on meanwhile; %s left to whoever moved it", group.id, trigger)
        return
    log.info("group %s: %s -> %s", group.id, group.status, new)
    volume_ids = [v for flip in plans.values() for v in (flip.new_primary, flip.old_primary)]
    try:
        regrant_exports(runtime, volume_ids)
    except (AgentUnavailable, AgentRequestFailed) as exc:
        # The database holds the new access; an agent re-grants it when it returns.
        log.warning("group %s: exports not re-granted yet: %s", group.id, exc)
