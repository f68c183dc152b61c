"""The batched measurement costs what changed: an idle agent reports nothing since the
last version, a change reports only its volume, and a pass writes only rows whose
measured values differ (reconciler/measurements.py, agent/mirror/changes.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from openevs.contract_client import AgentClient
from openevs.db.models import ReplicationPair
from openevs.reconciler.measurements import Measurements
from tests.integration.replication.test_group_api import PAIRS, make_pairs
from tests.support.waiting import wait_for


def settled_version(agent: AgentClient) -> int:
    """The agent's version once an ask since the previous one returns nothing."""
    last = agent.replication_changes(None).version

    def quiet() -> int | None:
        nonlocal last
        got = agent.replication_changes(last)
        assert got.changed_only
        if got.volumes:
            last = got.version
            return None
        return got.version

    return wait_for("no replication change on the agent", quiet, 30)


def rows(api: Any) -> dict[str, ReplicationPair]:
    with api.runtime.db.session() as session:
        return {p.id: p for p in session.scalars(select(ReplicationPair))}


def test_only_what_changed_is_read_and_only_what_differs_is_written(api: Any) -> None:
    ids = make_pairs(api, 3)
    for pid in ids:
        api.wait(f"{PAIRS}/{pid}", lambda r: r.json()["replication"]["replication_status"] == "active", 60)
    agent = api.runtime.agent("az1.dc1")
    volumes = [p.production_volume_id for p in rows(api).values()]

    def leases_given_back() -> bool:  # the initial syncs' witness leases (a real change)
        states = [agent.get_replication(v) for v in volumes]
        return all(s.arbitration is None or not s.arbitration.lease for s in states)

    wait_for("the witness leases of the initial syncs to be given back", leases_given_back, 60)
    version = settled_version(agent)
    Measurements(api.runtime).observe()  # rows as the settled agent states them
    before = rows(api)
    paused = before[ids[0]].production_volume_id
    agent.pause_replication(paused)
    got = agent.replication_changes(version)
    assert got.changed_only and [s.volume_id for s in got.volumes] == [paused]
    assert got.version > version

    measurements = Measurements(api.runtime)
    measurements.observe()  # the first pass reads everything, and writes what differs
    measurements.observe()
    assert measurements.states[paused].replication_status == "active-stopped"
    after = rows(api)
    assert after[ids[0]].replication_status == "active-stopped"
    for pid in ids[1:]:  # unchanged measurements: rows not written
        assert after[pid].updated_at == before[pid].updated_at, pid
    agent.resume_replication(paused)
