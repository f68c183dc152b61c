"""Carries out the online verify runs of pairs (domain/verify.py), slice by slice.

For each slice (16 MiB) of a pair being verified: the production agent
hashes it (and says which regions were busy), the DR agent hashes it, the
production agent says which regions were written meanwhile; the domain
compares. Mismatched regions are marked dirty on the production agent at
once, so the sync repairs them while the verify goes on. A slice whose
three calls took longer than `TRUST_WINDOW_S` is skipped (an extent the
production agent cools after that long could hide a write). Each pass
spends at most `PASS_BUDGET_S` here, so failovers never wait behind a
verify; the run is saved after every pass and resumes after a crash.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select, update

from openevs.contract import AgentError, DirtyRanges
from openevs.contract_ops import ChangesRequest, HashRequest
from openevs.db.models import ReplicationPair, utcnow
from openevs.domain.replication import PairStatus
from openevs.domain.verify import VerifyRun, add_slice, compare_slice
from openevs.reconciler.driver import StepFailed
from openevs.reconciler.roles import az_of
from openevs.runtime import Runtime

log = logging.getLogger(__name__)

SLICE_BYTES = 16 << 20
PASS_BUDGET_S = 0.5
TRUST_WINDOW_S = 1.5  # < activity.COOL_INTERVAL_S: no written extent cools sooner


def _slice(runtime: Runtime, pair: ReplicationPair, run: VerifyRun) -> None:
    prod_id, dr_id = pair.production_volume_id, pair.dr_volume_id
    prod, dr = runtime.agent(az_of(runtime, prod_id)), runtime.agent(az_of(runtime, dr_id))
    offset = run.offset_bytes
    length = min(SLICE_BYTES, run.total_bytes - offset)
    request = HashRequest(offset=offset, length=length, key=run.key)
    started = time.monotonic()
    ours = prod.hash_regions(prod_id, request)
    theirs = dr.hash_regions(dr_id, request)
    since = ChangesRequest(offset=offset, length=length, since_seq=ours.write_seq)
    changed = prod.region_changes(prod_id, since)
    regions = range(ours.first_region, ours.first_region + len(ours.digests))
    if time.monotonic() - started > TRUST_WINDOW_S:
        skip: set[int] = set(regions)
    else:
        skip = set(ours.busy) | set(changed.regions)
    mismatched, skipped = compare_slice(ours.first_region, ours.digests, theirs.digests, skip)
    bad = add_slice(run, length, mismatched, skipped)
    if bad:
        log.warning("pair %s: verify found %d bytes differing at %s; marked dirty", pair.id,
                    sum(r[1] for r in bad), bad[:4])  # fmt: skip
        prod.mark_dirty(prod_id, DirtyRanges(ranges=[(o, n) for o, n in bad]))


def _advance(runtime: Runtime, pair: ReplicationPair, deadline: float) -> None:
    assert pair.verify is not None
    run = VerifyRun.load(pair.verify)
    try:
        while run.offset_bytes < run.total_bytes and time.monotonic() < deadline:
            _slice(runtime, pair, run)
        if run.offset_bytes >= run.total_bytes:
            run.state = "finished"
    except (AgentError, StepFailed) as exc:
        run.state, run.error = "failed", str(exc)[:1024]
    if not run.running:
        run.finished_at = utcnow().strftime("%Y-%m-%dT%H:%M:%S.%f")
        log.info("pair %s: verify %s: %d bytes checked, %d mismatched, %d skipped", pair.id, run.state,
                 run.checked_bytes, run.mismatched_bytes, run.skipped_bytes)  # fmt: skip
    with runtime.db.session() as session:
        row = update(ReplicationPair).where(ReplicationPair.id == pair.id)
        session.execute(row.values(verify=run.dump()))


def run_verifies(runtime: Runtime) -> int:
    """One pass over the running verifies; how many are still running."""
    with runtime.db.session() as session:
        rows = session.scalars(
            select(ReplicationPair).where(
                ReplicationPair.verify.is_not(None), ReplicationPair.status == PairStatus.AVAILABLE
            )
        )
        pairs = [p for p in rows if p.verify is not None and VerifyRun.load(p.verify).running]
    deadline = time.monotonic() + PASS_BUDGET_S
    for pair in pairs:
        try:
            _advance(runtime, pair, deadline)
        except Exception:
            log.exception("pair %s: verify step failed", pair.id)
    return len(pairs)
