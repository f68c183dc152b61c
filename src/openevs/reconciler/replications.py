"""Drives replication pairs: sets roles on both agents, tears them down, and
copies the measured replication state of each pair into its row.

`replication_status`, `progress` and `fault_level` are never set by a rule
here: they are what the production disk's agent reports of its bytes (dirty
bitmap, link, running sync), or fault "2" when that agent cannot be reached
(`domain/measurement.py`).
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, update

from openevs.contract import AgentRequestFailed, AgentUnavailable, ReplicationState
from openevs.db.cas import delete_in_status
from openevs.db.models import ReplicationClaim, ReplicationPair, utcnow
from openevs.domain import replication as rep
from openevs.domain.measurement import measure_pair
from openevs.domain.replication import PAIR_MACHINE, PairStatus, PairTrigger, Role
from openevs.reconciler.driver import Kind, Step
from openevs.reconciler.roles import call, configure_pair
from openevs.runtime import Runtime
from openevs.services.connections import regrant_exports

log = logging.getLogger(__name__)


def create(runtime: Runtime, pair: ReplicationPair) -> None:
    configure_pair(runtime, pair, initial=True)
    PAIRS.advance(
        runtime,
        pair,
        PairTrigger.CONFIGURED,
        replication_status=rep.ReplicationStatus.COPYING,
        progress="0",
        fault_level=rep.FAULT_NONE,
        failure_detail=None,
    )


def remove(runtime: Runtime, pair: ReplicationPair) -> None:
    prod, dr = pair.production_volume_id, pair.dr_volume_id
    call(runtime, prod, lambda a: a.delete_replication(prod), primary=True)
    call(runtime, dr, lambda a: a.delete_replication(dr), primary=False)
    try:  # before the row goes: once the pair reads as deleted, the DR disk takes writes
        regrant_exports(runtime, [prod, dr], writable=True)
    except (AgentUnavailable, AgentRequestFailed) as exc:
        log.warning("pair %s: exports not re-granted yet (done when the agent returns): %s", pair.id, exc)
    with runtime.db.session() as session:
        session.execute(delete(ReplicationClaim).where(ReplicationClaim.pair_id == pair.id))
        won = delete_in_status(session, ReplicationPair, pair.id, PairStatus.DELETING)
    if won:
        log.info("pair %s deleted; both disks are ordinary disks again", pair.id)
    else:
        log.info("pair %s: deleted meanwhile; left to whoever deleted it", pair.id)


def _error_status(pair: ReplicationPair) -> dict[str, str]:
    return {"replication_status": rep.ReplicationStatus.ERROR}


STEPS: dict[PairStatus, Step[ReplicationPair]] = {
    PairStatus.CREATING: Step(create, PairTrigger.CREATE_FAILED, _error_status),
    PairStatus.DELETING: Step(remove, PairTrigger.DELETE_FAILED),
}

PAIRS: Kind[ReplicationPair] = Kind(
    PAIR_MACHINE, ReplicationPair, lambda pair: STEPS[PairStatus(pair.status)], frozenset(STEPS)
)


# What a pair row keeps of the primary's ArbitrationState: no counters that tick.
ARBITRATION_KEPT = {"witness", "witness_reachable", "lease", "outdated", "refusal", "suspended"}


def record(runtime: Runtime, pair: ReplicationPair, state: ReplicationState | None) -> None:
    """Write the measured values of `state` into the pair's row, only those that changed."""
    if state is not None and state.role is not Role.PRIMARY:
        return  # roles are being (re)configured; the next pass measures again
    was_suspended = bool((pair.arbitration or {}).get("suspended"))
    values: dict[str, object] = dict(measure_pair(state, was_suspended))
    if state is not None:
        kept = state.arbitration.model_dump(include=ARBITRATION_KEPT) if state.arbitration else None
        values["arbitration"] = kept
    changed = {k: v for k, v in values.items() if getattr(pair, k) != v}
    if not changed:
        return
    with runtime.db.session() as session:
        session.execute(
            update(ReplicationPair)
            .where(ReplicationPair.id == pair.id, ReplicationPair.status == pair.status)
            .values(updated_at=utcnow(), **changed)
        )
