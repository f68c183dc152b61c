"""Online verify use cases: start a verify of a pair, or of every pair of a group.

A verify is an openevs extension (the EVS API has none; docs/monitoring.md,
"Online verify"). Starting one stores a new run (domain/verify.py) with a
fresh hash key in the pair row; the reconciler carries it out slice by
slice (reconciler/verify.py) and the pair view shows it as `verify`.
"""

from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from openevs.db.models import ReplicationGroup, ReplicationPair, utcnow
from openevs.domain.errors import InvalidState
from openevs.domain.replication import PairStatus
from openevs.domain.verify import VerifyRun
from openevs.runtime import Runtime
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
