"""A group failover sends each agent its members' configs in one batch
(POST /replication/batch); a refused batch of demotes is re-sent member by
member, so one old primary that refuses does not keep the others unfenced."""

from __future__ import annotations

from sqlalchemy import select

from openevs.contract import ReplicationRequest
from openevs.db.models import ReplicationGroup, ReplicationPair
from openevs.domain.replication import Role
from openevs.reconciler.flips import flips
from openevs.reconciler.loop import Reconciler
from openevs.runtime import Runtime
from openevs.services import groups
from tests.integration.reconciler.test_pass_breaker import add_group, status_of
from tests.support.rows import AZ_A, AZ_B

MEMBERS = 4


def test_one_refused_demote_does_not_keep_the_others_from_being_fenced(
    runtime: Runtime, project_id: str
) -> None:
    gid = add_group(runtime, project_id, MEMBERS)
    reconciler = Reconciler(runtime)
    for _ in range(2):  # the agents' rows and the members' roles, as a running controller has them
        reconciler.run_once()
        reconciler._last_health = 0.0  # noqa: SLF001
    with runtime.db.session() as session:
        pairs = list(session.scalars(select(ReplicationPair).where(ReplicationPair.group_id == gid)))
    stubborn = pairs[0]
    # One old primary is at an epoch above the plan's: it refuses its demote (stale_epoch).
    runtime.agent(AZ_A).set_replication(
        stubborn.production_volume_id,
        ReplicationRequest(role=Role.PRIMARY, epoch=50, pair_id=stubborn.id, group_id=gid, mirroring=False),
    )
    groups.force_failover_group(runtime, project_id, gid)
    with runtime.db.session() as session:
        group = session.get(ReplicationGroup, gid)
        assert group is not None
        plan = flips(group)
    reconciler.run_once()
    assert status_of(runtime, ReplicationGroup, gid) == "failovered"
    for pair in pairs:
        flip = plan[pair.id]
        old = runtime.agent(AZ_A).get_replication(flip.old_primary)
        new = runtime.agent(AZ_B).get_replication(flip.new_primary)
        assert (new.role, new.epoch) == ("primary", flip.epoch)
        if pair.id == stubborn.id:
            assert (old.role, old.epoch) == ("primary", 50)  # refused, left to its restart's fence
        else:
            assert (old.role, old.epoch) == ("secondary", flip.epoch)
