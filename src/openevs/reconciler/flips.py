"""Role flips of a consistency group's members, shared by failover and
switchover: demote an old primary, promote its DR disk, and swap the roles
in the rows once every member is flipped.

The plan of a flip (new epoch and link secret per member) was fixed in the
group row when the request was accepted, so a resumed pass carries out the
same plan; a member whose row already has the plan's epoch is done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, select, update

from openevs.contract import AgentRequestFailed, AgentUnavailable, Peer, ReplicationRequest, WitnessAddress
from openevs.contract_plans import FailoverPlan, PairFlip, Plan, SwitchoverPlan, load_plan
from openevs.db.cas import compare_and_set
from openevs.db.models import Agent, ReplicationGroup, ReplicationPair, Volume, utcnow
from openevs.domain import replication as rep
from openevs.domain.replication import GROUP_MACHINE, GroupTrigger, Role
from openevs.reconciler.driver import StepFailed
from openevs.reconciler.roles import arbiter_with, set_role
from openevs.runtime import Runtime
from openevs.services.agent_errors import failure_detail
from openevs.services.arbitration import witness_of
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


@dataclass(frozen=True)
class Places:
    """What one pass of a flip reads once for all its members (not once per member):
    the AZ of every member's disks and the NBD address of every agent."""

    azs: dict[str, str]
    nbd: dict[str, tuple[str, int]]

    @classmethod
    def read(cls, runtime: Runtime, todo: list[tuple[ReplicationPair, PairFlip]]) -> Places:
        ids = sorted({v for _, flip in todo for v in (flip.new_primary, flip.old_primary)})
        with runtime.db.session() as session:
            rows = session.execute(select(Volume.id, Volume.availability_zone).where(Volume.id.in_(ids)))
            azs = {vid: az for vid, az in rows}
            nbd = {a.availability_zone: (a.nbd_host, a.nbd_port) for a in session.scalars(select(Agent))}
        return cls(azs=azs, nbd={az: addr for az, addr in nbd.items() if addr[1]})

    def az_of(self, volume_id: str) -> str:
        if volume_id not in self.azs:
            raise StepFailed(f"volume {volume_id} vanished", rep.FD_INTERNAL)
        return self.azs[volume_id]

    def nbd_address(self, az: str) -> tuple[str, int]:
        if az not in self.nbd:
            raise AgentUnavailable(f"the agent of {az} has not reported its NBD address")
        return self.nbd[az]


def promote(
    runtime: Runtime, pair: ReplicationPair, flip: PairFlip, mirroring: bool, unit_epoch: int
) -> None:
    """The DR disk of one pair becomes primary (`promote_all` of one member)."""
    promote_all(runtime, [(pair, flip)], mirroring, unit_epoch)


def promote_all(
    runtime: Runtime, todo: list[tuple[ReplicationPair, PairFlip]], mirroring: bool, unit_epoch: int,
    arbitrated: bool = True, where: Places | None = None,
) -> None:  # fmt: skip
    """The DR disks become primaries; their arbiter is at `unit_epoch` (the group's);
    `arbitrated=False`: none (a forced failover that could not reach the witness).
    One batched call per agent (POST /replication/batch), in the members' order;
    a refusal fails the step as the same member's own call would."""
    where = where or Places.read(runtime, todo)
    witnesses: dict[tuple[str, str], WitnessAddress | None] = {}
    by_az: dict[str, list[tuple[str, ReplicationRequest]]] = {}
    for pair, flip in todo:
        az, peer_az = where.az_of(flip.new_primary), where.az_of(flip.old_primary)
        host, port = where.nbd_address(peer_az)
        arbiter = None
        if arbitrated:
            if (az, peer_az) not in witnesses:
                witnesses[az, peer_az] = witness_of(runtime, az, peer_az)
            arbiter = arbiter_with(runtime, pair, witnesses[az, peer_az], unit_epoch)
        request = ReplicationRequest(
            role=Role.PRIMARY,
            epoch=flip.epoch,
            pair_id=pair.id,
            group_id=pair.group_id,
            peer=Peer(host=host, port=port, export=open_link(runtime.sealer, flip.link_export), az=peer_az),
            mirroring=mirroring,
            arbiter=arbiter,
        )
        by_az.setdefault(az, []).append((flip.new_primary, request))
    for az, configs in by_az.items():
        try:
            runtime.agent(az).set_replication_batch(configs)
        except AgentRequestFailed as exc:
            raise StepFailed(str(exc), failure_detail(exc, primary=False)) from exc


def demote_request(runtime: Runtime, pair: ReplicationPair, flip: PairFlip) -> ReplicationRequest:
    return ReplicationRequest(
        role=Role.SECONDARY,
        epoch=flip.epoch,
        pair_id=pair.id,
        group_id=pair.group_id,
        link_export=open_link(runtime.sealer, flip.link_export),
    )


def demote(runtime: Runtime, pair: ReplicationPair, flip: PairFlip) -> None:
    set_role(runtime, flip.old_primary, demote_request(runtime, pair, flip), primary=True)


class PhaseClock:
    """How long each phase of a step took, for its log line ("read 0.012s, ...")."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps.append((phase, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{phase} {seconds:.3f}s" for phase, seconds in self.laps)


def commit_flip(
    runtime: Runtime, group: ReplicationGroup, trigger: GroupTrigger, clock: PhaseClock | None = None
) -> None:
    """Swap the roles in the rows (priority_station moves) and end the transition,
    in one transaction; then re-grant the disks' exports with their new access."""
    clock = clock or PhaseClock()
    plans = flips(group)
    new_station = group.priority_station
    new = GROUP_MACHINE.next(group.status, trigger)
    with runtime.db.session() as session:
        new_ids = [flip.new_primary for flip in plans.values()]
        rows = session.execute(select(Volume.id, Volume.availability_zone).where(Volume.id.in_(new_ids)))
        azs = {vid: az for vid, az in rows}
        swaps = []
        for pair_id, flip in plans.items():
            if flip.new_primary not in azs:
                continue
            new_station = azs[flip.new_primary]
            swaps.append({
                "b_id": pair_id, "b_epoch": flip.epoch, "b_prod": flip.new_primary, "b_dr": flip.old_primary,
                "b_link": flip.link_export, "b_station": new_station, "b_at": utcnow(),
            })  # fmt: skip
        if swaps:
            # One statement executed for every member (executemany), on the table: no
            # pair object is loaded in this session, nothing to evaluate the WHERE against
            # (the ORM's per-update evaluation cost ~10 ms per member).
            pairs = cast(Table, ReplicationPair.__table__)
            session.connection().execute(
                update(pairs)
                .where(pairs.c.id == bindparam("b_id"), pairs.c.epoch < bindparam("b_epoch"))
                .values(
                    production_volume_id=bindparam("b_prod"), dr_volume_id=bindparam("b_dr"),
                    epoch=bindparam("b_epoch"), link_export=bindparam("b_link"),
                    priority_station=bindparam("b_station"), updated_at=bindparam("b_at"),
                ),
                swaps,
            )  # fmt: skip
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
    clock.lap("commit")
    log.info("group %s: %s -> %s", group.id, group.status, new)
    volume_ids = [v for flip in plans.values() for v in (flip.new_primary, flip.old_primary)]
    try:
        regrant_exports(runtime, volume_ids)
    except (AgentUnavailable, AgentRequestFailed) as exc:
        # The database holds the new access; an agent re-grants it when it returns.
        log.warning("group %s: exports not re-granted yet: %s", group.id, exc)
    clock.lap("regrant")
