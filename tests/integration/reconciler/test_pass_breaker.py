"""The reconciler's per-pass circuit breaker (services/agent_errors.PassBreaker):
once an AZ's agent did not answer in a pass, the rest of the pass does not call
it again, so a group failover whose old primary is gone costs one unanswered
call per pass, not one per member."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from openevs.agent.client import HttpAgentClient
from openevs.db.models import ReplicationGroup, ReplicationPair
from openevs.reconciler.loop import Reconciler
from openevs.runtime import Runtime
from openevs.services import groups
from tests.support.rows import AZ_A, AZ_B, add_pair, add_volume

MEMBERS = 5


class CountedClient(HttpAgentClient):
    """A real client of a socket nobody serves, counting the requests it tried."""

    def __init__(self, az: str, url: str) -> None:
        super().__init__(az, url, timeout_s=1)
        self.tried = 0

    def _send(self, method: str, path: str, body: BaseModel | None = None) -> httpx.Response:
        self.tried += 1
        return super()._send(method, path, body)


def add_group(runtime: Runtime, project_id: str, members: int) -> str:
    gid = str(uuid.uuid4())
    with runtime.db.session() as session:
        session.add(ReplicationGroup(id=gid, project_id=project_id, status="available",
                                     priority_station=AZ_A, pending={}))  # fmt: skip
    for _ in range(members):
        prod, dr = add_volume(runtime, project_id, AZ_A), add_volume(runtime, project_id, AZ_B)
        add_pair(runtime, project_id, prod, dr, group_id=gid)
    return gid


def status_of(runtime: Runtime, model: Any, ident: str) -> str:
    with runtime.db.session() as session:
        row = session.get(model, ident)
        assert row is not None
        return str(row.status)


def test_failover_with_the_old_primary_gone_calls_it_once_per_pass(
    runtime: Runtime, project_id: str, tmp_path: Path
) -> None:
    gid = add_group(runtime, project_id, MEMBERS)
    reconciler = Reconciler(runtime)
    for _ in range(2):  # the agents' rows (NBD addresses) as a running controller has them
        reconciler.run_once()
        reconciler._last_health = 0.0  # noqa: SLF001
    real = runtime.agents[AZ_A]
    dead = CountedClient(AZ_A, f"unix:{tmp_path / 'nobody.sock'}")
    runtime.agents[AZ_A] = dead
    try:
        # Forced: the first passes gave the (real) old primary its role and the witness's
        # lease, which a plain failover would wait out.
        groups.force_failover_group(runtime, project_id, gid)
        reconciler._last_health = 0.0  # noqa: SLF001 - the health check is due in this pass
        reconciler.run_once()
        assert status_of(runtime, ReplicationGroup, gid) == "failovered"
        # The health check found AZ_A gone; no demote, re-grant or measurement tried it again.
        assert dead.tried == 1
        assert reconciler.breaker.down() == {AZ_A}
        reconciler.run_once()  # the next pass tries the agent again
        assert dead.tried >= 2
    finally:
        runtime.agents[AZ_A] = real
        dead.close()
    with runtime.db.session() as session:
        members = session.query(ReplicationPair).filter(ReplicationPair.group_id == gid).all()
        assert {p.priority_station for p in members} == {AZ_B}


def test_the_api_runtime_has_no_breaker(runtime: Runtime) -> None:
    reconciler = Reconciler(runtime)
    assert runtime.breaker is None and reconciler.runtime.breaker is reconciler.breaker
    assert reconciler.runtime.agents is runtime.agents and reconciler.runtime.wake is runtime.wake
