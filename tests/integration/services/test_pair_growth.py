"""Growing a pair's disks without a transaction across the agent calls: claim and
commit, grow, record; a concurrent extend of a claimed pair is refused; a failed
growth releases its claim; a claim whose request died is finished by the reconciler."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from openevs.db.models import ReplicationPair, Volume, utcnow
from openevs.domain.errors import ChangedConcurrently, Conflict, ServiceUnavailable
from openevs.domain.volumes import GIB
from openevs.reconciler.volumes import finish_pair_grows
from openevs.runtime import Runtime
from openevs.services import pair_growth
from openevs.services.pair_growth import Claim
from openevs.services.unit_of_work import UnitOfWork
from tests.support.rows import AZ_A, AZ_B, add_pair, add_volume


def make_pair(runtime: Runtime, project_id: str) -> tuple[str, str, str]:
    prod, dr = add_volume(runtime, project_id, AZ_A), add_volume(runtime, project_id, AZ_B)
    return add_pair(runtime, project_id, prod, dr), prod, dr


def claim(runtime: Runtime, pair_id: str, new_gb: int) -> Claim:
    with UnitOfWork(runtime) as uow:
        pair = uow.session.get(ReplicationPair, pair_id)
        assert pair is not None
        prod = uow.session.get(Volume, pair.production_volume_id)
        dr = uow.session.get(Volume, pair.dr_volume_id)
        assert prod is not None and dr is not None
        return pair_growth.claim(uow.session, pair, prod, dr, new_gb)


def sizes(runtime: Runtime, pair_id: str, *vids: str) -> tuple[int, list[tuple[int, int]]]:
    """The pair's volume_size_gb and each disk's (size_gb, target_size_gb)."""
    with runtime.db.session() as session:
        pair = session.get(ReplicationPair, pair_id)
        vols = [session.get(Volume, v) for v in vids]
        assert pair is not None and all(vols)
        return pair.volume_size_gb, [(v.size_gb, v.target_size_gb) for v in vols if v is not None]


def agent_gb(runtime: Runtime, az: str, vid: str) -> int:
    return runtime.agent(az).get_volume(vid).size_bytes // GIB


def test_claim_grow_record(runtime: Runtime, project_id: str) -> None:
    pid, prod, dr = make_pair(runtime, project_id)
    c = claim(runtime, pid, 3)
    # Committed before any agent call: the claim shows in the targets (quota counts them),
    # not in the sizes the API shows.
    assert sizes(runtime, pid, prod, dr) == (1, [(1, 3), (1, 3)])
    with pytest.raises(Conflict) as info:
        claim(runtime, pid, 4)  # a concurrent extend of the same pair
    assert "being extended to 3 GB" in info.value.message
    pair_growth.carry_out(runtime, [c])
    assert sizes(runtime, pid, prod, dr) == (3, [(3, 3), (3, 3)])
    assert (agent_gb(runtime, AZ_A, prod), agent_gb(runtime, AZ_B, dr)) == (3, 3)
    claim(runtime, pid, 4)  # done: the next extend may claim


def test_a_refused_growth_releases_the_claim(runtime: Runtime, project_id: str) -> None:
    pid, prod, dr = make_pair(runtime, project_id)
    runtime.agent(AZ_B).grow_volume(dr, 5 * GIB)  # growing the DR disk to 2 GB is now a shrink
    c = claim(runtime, pid, 2)
    with pytest.raises(ServiceUnavailable) as info:
        pair_growth.carry_out(runtime, [c])
    assert info.value.code is not None and AZ_B in info.value.message
    assert sizes(runtime, pid, prod, dr) == (1, [(1, 1), (1, 1)])
    assert agent_gb(runtime, AZ_A, prod) == 1  # the DR side is grown first: production untouched


def test_the_reconciler_finishes_a_claim_whose_request_died(runtime: Runtime, project_id: str) -> None:
    pid, prod, dr = make_pair(runtime, project_id)
    claim(runtime, pid, 2)
    assert finish_pair_grows(runtime) == 0  # a fresh claim belongs to its request
    old = utcnow() - timedelta(seconds=runtime.settings.agent_timeout_s + 60)
    with runtime.db.session() as session:
        session.execute(update(Volume).where(Volume.id.in_([prod, dr])).values(updated_at=old))
    assert finish_pair_grows(runtime) == 1
    assert sizes(runtime, pid, prod, dr) == (2, [(2, 2), (2, 2)])
    assert (agent_gb(runtime, AZ_A, prod), agent_gb(runtime, AZ_B, dr)) == (2, 2)
    assert finish_pair_grows(runtime) == 0


def test_a_claim_decided_on_a_stale_size_is_refused(runtime: Runtime, project_id: str) -> None:
    """The race behind racing extends: a request that read the pair at 1 GB and then
    waited must not claim 2 GB after another request grew it to 3 GB."""
    pid, prod, dr = make_pair(runtime, project_id)
    with UnitOfWork(runtime) as stale:
        pair = stale.session.get(ReplicationPair, pid)
        vols = stale.session.get(Volume, prod), stale.session.get(Volume, dr)
        assert pair is not None and vols[0] is not None and vols[1] is not None
        pair_growth.carry_out(runtime, [claim(runtime, pid, 3)])  # meanwhile, in another request
        with pytest.raises(ChangedConcurrently):  # its rows still say 1 GB
            pair_growth.claim(stale.session, pair, vols[0], vols[1], 2)
    with pytest.raises(ChangedConcurrently):  # read afresh: 3 GB, and 2 is no growth
        claim(runtime, pid, 2)
    assert sizes(runtime, pid, prod, dr) == (3, [(3, 3), (3, 3)])
