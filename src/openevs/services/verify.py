"""Operator use cases beyond EVS: verify a pair or a group; set a pair's resync rate.

A verify is an openevs extension (the EVS API has none; docs/monitoring.md,
"Online verify"). Starting one stores a new run (domain/verify.py) with a
fresh hash key in the pair row; the reconciler carries it out slice by
slice (reconciler/verify.py) and the pair view shows it as `verify`.
"""

from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from openevs.contract_ops import ResyncRate
from openevs.db.models import ReplicationGroup, ReplicationPair, Volume, utcnow
from openevs.domain.errors import InvalidInput, InvalidState
from openevs.domain.replication import PairStatus
from openevs.domain.verify import VerifyRun
from openevs.runtime import Runtime
from openevs.services.agent_errors import call_agent
from openevs.services.groups import get_group, members
from openevs.services.replications import get_pair
from openevs.services.unit_of_work import UnitOfWork


def _start(session: Session, pair: ReplicationPair) -> None:
    if pair.status != PairStatus.AVAILABLE:
        raise InvalidState(f"cannot verify replication pair {pair.id} in status {pair.status}")
    if pair.verify is not None and VerifyRun.load(pair.verify).running:
        raise InvalidState(f"replication pair {pair.id} is being verified already")
    started = utcnow().strftime("%Y-%m-%dT%H:%M:%S.%f")  # as EVS bodies show times
    run = VerifyRun(key=secrets.token_hex(16), total_bytes=pair.volume_size_gb << 30, started_at=started)
    pair.verify = run.dump()


def verify_pair(runtime: Runtime, project_id: str, pair_id: str) -> ReplicationPair:
    with UnitOfWork(runtime) as uow:
        pair = get_pair(uow.session, project_id, pair_id)
        _start(uow.session, pair)
        uow.session.flush()
        uow.wake_reconciler()
        return pair


def set_resync_rate(runtime: Runtime, project_id: str, pair_id: str, rate_bytes_per_s: int) -> ReplicationPair:  # noqa: E501
    """Saved in the pair row (every role the controller sends carries it), then set on
    the production agent at once; 503 if that agent cannot be reached (the row keeps
    it and the next role push delivers it)."""
    if not 0 <= rate_bytes_per_s <= 1 << 40:
        raise InvalidInput("resync_rate_bytes_per_s must be between 0 (no limit) and 2**40")
    with UnitOfWork(runtime) as uow:
        pair = get_pair(uow.session, project_id, pair_id)
        if pair.status != PairStatus.AVAILABLE:
            raise InvalidState(f"cannot change replication pair {pair.id} in status {pair.status}")
        pair.resync_rate_limit_bytes_per_s = rate_bytes_per_s
        prod = uow.session.get(Volume, pair.production_volume_id)
        assert prod is not None
        az, vid, rate = prod.availability_zone, pair.production_volume_id, ResyncRate(
            resync_rate_bytes_per_s=rate_bytes_per_s)  # fmt: skip
        uow.after_commit(lambda: call_agent(runtime, az, lambda a: a.set_resync_rate(vid, rate)))
        uow.session.flush()
        return pair


def verify_group(runtime: Runtime, project_id: str, group_id: str) -> ReplicationGroup:
    with UnitOfWork(runtime) as uow:
        group = get_group(uow.session, project_id, group_id)
        pairs = members(uow.session, group.id)
        if not pairs:
            raise InvalidState("the group has no replication pairs to verify")
        for pair in pairs:
            _start(uow.session, pair)
        uow.session.flush()
        uow.wake_reconciler()
        return group
