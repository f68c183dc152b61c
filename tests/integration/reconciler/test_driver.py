"""The step driver on real rows: an unreachable agent is retried until
agent_timeout_s, then fails the transition with FD_LINK; a refusal fails it at
once with the failure_detail of the pool that refused; a lost race is left alone."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from openevs.agent.client import HttpAgentClient
from openevs.db.models import ReplicationPair, Volume, utcnow
from openevs.domain import replication as rep
from openevs.domain.states import VolumeTrigger
from openevs.reconciler import volumes
from openevs.reconciler.replications import PAIRS
from openevs.reconciler.volumes import VOLUMES
from openevs.runtime import Runtime
from tests.support.rows import AZ_A, AZ_B, add_pair, add_volume


@pytest.fixture
def az_a_down(runtime: Runtime, tmp_path: Path) -> Iterator[None]:
    """The agent of AZ_A cannot be reached (a client of a socket nobody serves)."""
    real = runtime.agents[AZ_A]
    runtime.agents[AZ_A] = HttpAgentClient(AZ_A, f"unix:{tmp_path / 'nobody.sock'}", timeout_s=1)
    yield
    runtime.agents[AZ_A].close()
    runtime.agents[AZ_A] = real


Model = type[Volume] | type[ReplicationPair]


def row(runtime: Runtime, model: Model, ident: str) -> Volume | ReplicationPair:
    with runtime.db.session() as session:
        found = session.get(model, ident)
        assert found is not None
        return found


def age(runtime: Runtime, model: Model, ident: str) -> None:
    """Make the row look older than agent_timeout_s."""
    old = utcnow() - timedelta(seconds=runtime.settings.agent_timeout_s + 60)
    with runtime.db.session() as session:
        session.execute(update(model).where(model.id == ident).values(updated_at=old, created_at=old))


def test_unreachable_agent_fails_only_after_the_timeout(
    runtime: Runtime, project_id: str, az_a_down: None
) -> None:
    with runtime.db.session() as session:
        session.add(Volume(id="v-creating", project_id=project_id, size_gb=1, target_size_gb=1,
                           volume_type="SSD", availability_zone=AZ_A, status="creating"))  # fmt: skip
    assert VOLUMES.run(runtime) == 1
    assert row(runtime, Volume, "v-creating").status == "creating"  # retried next pass
    age(runtime, Volume, "v-creating")
    VOLUMES.run(runtime)
    failed = row(runtime, Volume, "v-creating")
    assert failed.status == "error" and (failed.fault or "").startswith("agent unreachable")


def test_a_pair_fails_with_the_link_code_after_the_timeout(
    runtime: Runtime, project_id: str, az_a_down: None
) -> None:
    prod = add_volume(runtime, project_id, AZ_B)  # reachable; the DR side is in the AZ that is down
    with runtime.db.session() as session:
        session.add(Volume(id="dr-down", project_id=project_id, size_gb=1, target_size_gb=1,
                           volume_type="SSD", availability_zone=AZ_A, status="available"))  # fmt: skip
    pid = add_pair(runtime, project_id, prod, "dr-down", status="creating")
    PAIRS.run(runtime)
    assert row(runtime, ReplicationPair, pid).status == "creating"
    age(runtime, ReplicationPair, pid)
    PAIRS.run(runtime)
    pair = row(runtime, ReplicationPair, pid)
    assert isinstance(pair, ReplicationPair)
    assert (pair.status, pair.failure_detail, pair.replication_status) == ("error", rep.FD_LINK, "error")


def test_a_refusal_fails_at_once_with_its_failure_detail(runtime: Runtime, project_id: str) -> None:
    prod, dr = add_volume(runtime, project_id, AZ_A), add_volume(runtime, project_id, AZ_B)
    runtime.agent(AZ_B).delete_volume(dr)  # the DR agent refuses a role for a disk it lacks
    pid = add_pair(runtime, project_id, prod, dr, status="creating")
    PAIRS.run(runtime)
    pair = row(runtime, ReplicationPair, pid)
    assert isinstance(pair, ReplicationPair)
    assert pair.status == "error"
    assert pair.failure_detail == rep.FD_INTERNAL  # not found: not a pool fault


def test_a_lost_race_is_left_to_the_winner(runtime: Runtime, project_id: str) -> None:
    vid = add_volume(runtime, project_id, AZ_A)
    stale = row(runtime, Volume, vid)
    assert isinstance(stale, Volume)
    assert VOLUMES.advance(runtime, stale, VolumeTrigger.DELETE) is True
    assert VOLUMES.advance(runtime, stale, VolumeTrigger.DELETE) is False  # read as available: lost
    assert row(runtime, Volume, vid).status == "deleting"


def test_a_delete_run_by_two_workers_is_logged_once(
    runtime: Runtime, project_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers read the same deleting rows: both run the step, only the one whose
    DELETE removed the row says it deleted it (the scale-out test counts these lines)."""
    vid = add_volume(runtime, project_id, AZ_A)
    with runtime.db.session() as session:
        session.execute(update(Volume).where(Volume.id == vid).values(status="deleting"))
    stale = row(runtime, Volume, vid)
    assert isinstance(stale, Volume)
    caplog.set_level(logging.INFO, logger="openevs.reconciler")
    volumes.remove(runtime, stale)
    volumes.remove(runtime, stale)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"volume {vid} deleted", f"volume {vid}: deleted meanwhile; left to whoever deleted it"]
