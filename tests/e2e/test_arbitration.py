"""Automatic failover (OPENEVS_AUTO_FAILOVER) with the real `openevs serve`, two
standalone agents the test can kill, and a standalone witness (OPENEVS_WITNESS).

On: the primary AZ's agent dies, the DR agent sees the link down, the witness
would grant the DR side: the group fails over by itself and looks exactly like
a manual failover (failovered, priority_station moved, DR disks writable).
Off (the default): the same loss leaves the group available until an operator
fails it over.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.agents import StandaloneAgent
from tests.e2e.conftest import ServeProcess, Session
from tests.e2e.test_groups import Disk
from tests.support.api import make_disk, wait_group, wait_json
from tests.support.waiting import wait_for
from tests.support.witness import WitnessProcess

pytestmark = pytest.mark.e2e

AZ_A, AZ_B = "az1.dc1", "az2.dc2"
GROUPS = "/v2/{p}/os-vendor-replication-consistency-groups"
PAIRS = "/v2/{p}/os-vendor-replications"
AFTER_S = 1.0

Stack = tuple[StandaloneAgent, StandaloneAgent, Session]


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[[bool], Stack]]:
    started: list[tuple[ServeProcess, StandaloneAgent, StandaloneAgent, WitnessProcess]] = []

    def start(auto: bool) -> Stack:
        a, b = StandaloneAgent(tmp_path, AZ_A), StandaloneAgent(tmp_path, AZ_B)
        witness = WitnessProcess(tmp_path / "witness", lease_s=2.0)
        serve = ServeProcess(tmp_path / "serve", extra_env={
            "OPENEVS_AGENT_URLS": f"{AZ_A}={a.url},{AZ_B}={b.url}",
            "OPENEVS_WITNESS": f"127.0.0.1:{witness.port}",
            "OPENEVS_AUTO_FAILOVER": "true" if auto else "false",
            "OPENEVS_AUTO_FAILOVER_AFTER_S": str(AFTER_S),
        })  # fmt: skip
        started.append((serve, a, b, witness))
        witness.start()
        a.start()
        b.start()
        serve.start()
        return a, b, serve.login()

    yield start
    for serve, a, b, witness in started:
        serve.close()
        a.stop()
        b.stop()
        witness.stop(signal.SIGKILL)


def active_group(s: Session) -> tuple[str, str]:
    """A group of one pair az1 -> az2, in sync; (group id, DR disk id)."""
    prod, dr = make_disk(s, AZ_A), make_disk(s, AZ_B)
    r = s.post(PAIRS, {"replication": {
        "volume_ids": [prod, dr], "priority_station": AZ_A, "replication_model": "hypermetro",
    }})  # fmt: skip
    assert r.status_code == 202, r.text
    pid = r.json()["replication"]["id"]
    wait_json(s, f"{PAIRS}/{pid}", "replication", lambda p: p["replication_status"] == "active")
    r = s.post(GROUPS, {"replication_consistency_group": {
        "name": "cg", "replication_ids": [pid], "priority_station": AZ_A, "replication_model": "hypermetro",
    }})  # fmt: skip
    assert r.status_code == 202, r.text
    gid = r.json()["replication_consistency_group"]["id"]
    wait_group(s, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active")
    return gid, dr


def test_auto_failover_on_fails_a_lost_primary_over(stack_factory: Callable[[bool], Stack]) -> None:
    a, _, s = stack_factory(True)
    gid, dr = active_group(s)
    a.kill()  # the primary AZ is gone: from the controller, the DR agent and the witness
    group = wait_group(s, gid, lambda g: g["status"] == "failovered", 90)
    assert group["priority_station"] == AZ_B
    disk = Disk(s, dr, AZ_B)
    disk.regrant()
    assert disk.addr[3] is False  # the DR disk is the writable production disk now
    disk.write(0, 1)


def test_auto_failover_off_waits_for_the_operator(stack_factory: Callable[[bool], Stack]) -> None:
    a, _, s = stack_factory(False)
    gid, _ = active_group(s)
    a.kill()
    wait_for("az1 to show unavailable", lambda: s.azs()[AZ_A] is False, 30)
    wait_group(s, gid, lambda g: g["fault_level"] == "2")
    # Many times the delay later the group is still where the operator left it...
    checks = []

    def still_available() -> bool:
        checks.append(wait_group(s, gid, lambda g: True)["status"])
        return len(checks) >= 20

    wait_for("twenty looks at the group", still_available, 60, interval_s=AFTER_S / 4)
    assert set(checks) == {"available"}, checks
    # ...and fails over when asked: the conditions were there.
    r = s.post(f"{GROUPS}/{gid}/action", {"os-failover-replication-consistency-group": None})
    assert r.status_code == 200, r.text
    wait_group(s, gid, lambda g: g["status"] == "failovered" and g["priority_station"] == AZ_B, 90)
