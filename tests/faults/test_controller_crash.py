"""SIGKILL the controller while pairs and groups are in transitional states.

Each step starts one transition (pair creating, group creating, reversing,
failovering, updating for reprotect and for removing a member, pair
deleting, group deleting), kills `openevs serve` a random few milliseconds
later and starts it again. Every resource must reach a terminal state, and
the roles the agents hold must agree with the database: the production disk
primary and writable, the DR disk secondary (or a fenced primary after a
failover), both at the pair's epoch.
"""

from __future__ import annotations

import random
import sqlite3
import time
from typing import Any

import pytest

from openevs.contract import ReplicationState
from tests.faults.harness import (
    AZ_A,
    AZ_B,
    GROUPS,
    PAIRS,
    FaultStack,
    agent_roles,
    create_group,
    create_pair,
    group_action,
    make_disk,
    record,
    trials,
    wait_group,
    wait_pair,
)

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

TERMINAL_GROUP = {"available", "error", "failovered", "error_reversing", "error_failovering",
                  "error_deleting"}  # fmt: skip


def db_pairs(stack: FaultStack) -> dict[str, dict[str, Any]]:
    con = sqlite3.connect(stack.serve.data_dir / "openevs.db")
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute(
            "select id, status, production_volume_id, dr_volume_id, epoch, group_id from replication_pairs"
        ).fetchall()
    finally:
        con.close()
    return {r["id"]: dict(r) for r in rows}


def check_roles(stack: FaultStack, failovered: bool = False) -> int:
    """Agents agree with the database for every pair; returns how many pairs were checked."""
    pairs = db_pairs(stack)
    vids = [v for p in pairs.values() for v in (p["production_volume_id"], p["dr_volume_id"])]
    states: dict[str, ReplicationState] = {}

    def all_agree() -> bool:
        nonlocal states
        states = agent_roles(stack, vids)
        for p in pairs.values():
            prod, dr = states.get(p["production_volume_id"]), states.get(p["dr_volume_id"])
            if prod is None or dr is None:
                return False
            if (prod.role, prod.fenced, prod.epoch) != ("primary", False, p["epoch"]):
                return False
            dr_ok = dr.role == "secondary" and dr.epoch == p["epoch"]
            dr_ok = dr_ok or (
                failovered and dr.role == "primary" and dr.fenced and dr.epoch < p["epoch"]
            )
            if not dr_ok:
                return False
        return True

    deadline = time.monotonic() + 60
    while not all_agree():
        if time.monotonic() > deadline:
            raise AssertionError(f"agents disagree with the database:\n{pairs}\n{states}")
        time.sleep(0.2)
    return len(pairs)


def crash_after(stack: FaultStack, rng: random.Random) -> None:
    time.sleep(rng.uniform(0, 0.25))
    stack.serve.kill()
    stack.serve.start()
    stack._session = None  # tokens survive, but the old client is bound to the dead process's pool


def test_controller_killed_in_every_transitional_state(fault_stack: FaultStack) -> None:
    rng = random.Random(7)
    n = trials(1)
    crashes = 0
    for _ in range(n):
        s = fault_stack.session
        disks = [(make_disk(s, AZ_A), make_disk(s, AZ_B)) for _ in range(2)]
        # Pair creating.
        pair_ids = [create_pair(s, p, d) for p, d in disks]
        crash_after(fault_stack, rng)
        crashes += 1
        s = fault_stack.session
        for pid in pair_ids:
            wait_pair(s, pid, lambda p: p["status"] == "available" and p["replication_status"] == "active")
        check_roles(fault_stack)
        # Group creating.
        gid = create_group(s, pair_ids)
        crash_after(fault_stack, rng)
        crashes += 1
        s = fault_stack.session
        wait_group(s, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active")
        check_roles(fault_stack)
        # Reversing (switchover).
        group_action(s, gid, "os-reverse-replication-consistency-group")
        crash_after(fault_stack, rng)
        crashes += 1
        s = fault_stack.session
        g = wait_group(s, gid, lambda g: g["status"] in TERMINAL_GROUP)
        assert g["status"] == "available" and g["priority_station"] == AZ_B, g
        wait_group(s, gid, lambda g: g["replication_status"] == "active")
        check_roles(fault_stack)
        # Failovering (back to AZ_A, both agents up).
        group_action(s, gid, "os-failover-replication-consistency-group")
        crash_after(fault_stack, rng)
        crashes += 1
        s = fault_stack.session
        g = wait_group(s, gid, lambda g: g["status"] in TERMINAL_GROUP)
        assert g["status"] == "failovered" and g["priority_station"] == AZ_A, g
        check_roles(fault_stack, failovered=True)
        # Updating (reprotect).
        group_action(s, gid, "os-reprotect-replication-consistency-group")
        crash_after(fault_stack, rng)
        crashes += 1
        s = fault_stack.session
        wait_group(s, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active")
        check_roles(fault_stack)
        # Updating (remove a member while paused).
        group_action(s, gid, "os-stop-replication-consistency-group")
        wait_group(s, gid, lambda g: g["replication_status"] in ("active-stopped", "inactive"))
        body = {"replication_consistency_group": {"remove_replication_ids": pair_ids}}
        r = s.request("PUT", f"{GROUPS}/{gid}", json=body)
        assert r.status_code == 202, r.text
        crash_after(fault_stack, rng)
        crashes += 1
        s = fault_stack.session
        wait_group(s, gid, lambda g: g["status"] == "available" and g["replication_ids"] == [])
        # Pair deleting and group deleting.
        for pid in pair_ids:
            assert s.delete(f"{PAIRS}/{pid}").status_code == 202
        assert s.delete(f"{GROUPS}/{gid}").status_code == 202
        crash_after(fault_stack, rng)
        crashes += 1
        s = fault_stack.session

        def gone(s: Any = s, pair_ids: list[str] = pair_ids, gid: str = gid) -> bool:
            paths = [f"{PAIRS}/{pid}" for pid in pair_ids] + [f"{GROUPS}/{gid}"]
            return all(s.get(path).status_code == 404 for path in paths)

        deadline = time.monotonic() + 60
        while not gone():
            assert time.monotonic() < deadline, "deleted pairs or group are still there"
            time.sleep(0.2)
        # The disks are plain standalone disks again, on both agents.
        states = agent_roles(fault_stack, [v for d in disks for v in d])
        assert all(st.role == "standalone" for st in states.values()), states
    record("controller_crash", trials=n, crashes=crashes, mode=fault_stack.mode)
