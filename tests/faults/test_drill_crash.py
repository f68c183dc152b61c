"""SIGKILL the DR agent, then the controller, while a DR drill with disks is taken
and while it is cleaned up, with a workload writing to production.

After each restart the drill reaches a terminal status (available, or error
when the agent stayed away past the agent timeout); when available its
snapshots and disks are available and the agent holds exactly the drill's
snapshots; after the cleanup nothing of it is left, on the controller or on
the agent; production never stopped writing and lost no acknowledged write.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.harness import AZ_B, FaultStack, make_group, record, trials
from tests.faults.workload import Workload, verify
from tests.support.api import wait_json

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.long, pytest.mark.timeout(900)]

GROUPS = "/v2/{p}/os-vendor-replication-consistency-groups"
TERMINAL = {"available", "error", "error_deleting"}


def _drill(stack: FaultStack, gid: str) -> dict[str, Any]:
    return wait_json(stack.session, f"{GROUPS}/{gid}/drill", "drill", lambda d: d["status"] in TERMINAL, 240)


def run_scenario(stack: FaultStack, crash: Callable[[], None], seed: int) -> int:
    s = stack.session
    gid, couples = make_group(s)
    wl = Workload({c.prod: c.prod_addr[:3] for c in couples}, region_bytes=16 << 20, seed=seed,
                  pace_s=0.005).start()  # fmt: skip
    wl.wait_acks(20)
    r = s.post(f"{GROUPS}/{gid}/drill", {"drill": {"create_disks": True}})
    assert r.status_code == 202, r.text
    crash()
    drill = _drill(stack, gid)
    s = stack.session
    snapshots = [m["snapshot_id"] for m in drill["members"]]
    if drill["status"] == "available":
        assert all(m["snapshot_status"] == "available" for m in drill["members"]), drill
        assert all(m["volume_status"] == "available" for m in drill["members"]), drill
        with stack.agents[AZ_B].client() as agent:
            held = {sn.snapshot_id for c in couples for sn in agent.list_snapshots(c.dr)}
        assert held == set(snapshots), (held, snapshots)
    assert s.delete(f"{GROUPS}/{gid}/drill").status_code == 202
    crash()
    s = stack.session
    deadline = time.monotonic() + 240
    while (r := s.get(f"{GROUPS}/{gid}/drill")).status_code != 404:
        assert r.status_code == 200, r.text
        if r.json()["drill"]["status"] == "error_deleting":  # the agent was away too long: ask again
            assert s.delete(f"{GROUPS}/{gid}/drill").status_code == 202
        assert time.monotonic() < deadline, r.text
        time.sleep(0.3)
    for sid in snapshots:
        assert s.get(f"/v2/{{p}}/snapshots/{sid}").status_code == 404
    with stack.agents[AZ_B].client() as agent:
        assert all(agent.list_snapshots(c.dr) == [] for c in couples)
    wl.stop()
    assert not wl.errors, wl.errors[:5]
    lost = [x for c in couples for x in verify(wl.logs[c.prod], c.prod, c.prod_addr[:3])]
    assert not lost, lost[:5]
    return 2


def test_dr_agent_killed_mid_drill_and_mid_cleanup(fault_stack: FaultStack) -> None:
    rng = random.Random(21)
    agent = fault_stack.agents[AZ_B]

    def crash() -> None:
        time.sleep(rng.uniform(0, 0.1))
        agent.kill()
        agent.start()

    crashes = sum(run_scenario(fault_stack, crash, 200 + t) for t in range(trials(1)))
    record("drill_agent_crash", crashes=crashes)


def test_controller_killed_mid_drill_and_mid_cleanup(fault_stack: FaultStack) -> None:
    rng = random.Random(22)

    def crash() -> None:
        time.sleep(rng.uniform(0, 0.1))
        fault_stack.serve.kill()
        fault_stack.serve.start()
        fault_stack._session = None  # noqa: SLF001 - the old client is bound to the dead process

    crashes = sum(run_scenario(fault_stack, crash, 300 + t) for t in range(trials(1)))
    record("drill_controller_crash", crashes=crashes)
