"""SIGKILL an agent mid-resync, mid-switchover and mid-reprotect.

After the agent restarts, the operation completes (or is retried cleanly
with the same action), the DR disks hold every acknowledged write, and at
no sampled moment do both disks of a pair accept user writes (at most one
primary that is not fenced). A watcher thread samples both agents' roles
every 50 ms for the whole test.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest

from openevs.contract import ReplicationState
from tests.faults.harness import (
    AZ_A,
    AZ_B,
    Couple,
    FaultStack,
    group_action,
    make_group,
    record,
    regrant,
    trials,
    wait_group,
    writable_primaries,
)
from tests.faults.workload import Workload, verify

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


class SplitBrainWatcher:
    def __init__(self, stack: FaultStack, couples: list[Couple]) -> None:
        self.stack, self.couples = stack, couples
        self.samples, self.violations = 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SplitBrainWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _read(self, az: str, vids: list[str]) -> dict[str, ReplicationState]:
        agent = self.stack.agents[az]
        if not agent.alive:
            return {}
        out = {}
        with agent.client() as client:
            for vid in vids:
                with contextlib.suppress(Exception):  # not on this agent, or mid-restart
                    out[vid] = client.get_replication(vid)
        return out

    def _run(self) -> None:
        """Causal samples: read X, then Y, then X again; a disk of X counts as writable only if
        both reads of X say so, so the overlap with Y's read is real, not a skew of the reads."""
        vids = [v for c in self.couples for v in (c.prod, c.dr)]
        order = [AZ_A, AZ_B]
        while not self._stop.is_set():
            x, y = order
            first, middle, last = self._read(x, vids), self._read(y, vids), self._read(x, vids)
            steady = {
                v: st for v, st in last.items()
                if v in first and _writable(first[v]) and _writable(st)
            }  # fmt: skip
            states = {**{v: st for v, st in middle.items() if _writable(st)}, **steady}
            self.samples += 1
            for c in self.couples:
                both = writable_primaries(states, c)
                if len(both) > 1:
                    self.violations.append({v: states[v] for v in both})
            order.reverse()
            self._stop.wait(0.05)


def _writable(state: ReplicationState) -> bool:
    return state.role == "primary" and not state.fenced


def _settle(s: Any, gid: str, retry_action: str) -> dict[str, Any]:
    """Wait for a terminal group; retry the action once if it ended where a retry is allowed."""
    g = wait_group(s, gid, lambda g: g["status"] not in ("reversing", "updating", "failovering"), 120)
    if g["status"] == "available" and g["replication_status"] not in ("active", "copying"):
        group_action(s, gid, retry_action)
    return wait_group(
        s, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active", 120
    )


def _dirty(stack: FaultStack, gid: str, couples: list[Couple], seed: int) -> Workload:
    """Pause the group and write, so a sync has regions to copy; returns the workload log."""
    s = stack.session
    group_action(s, gid, "os-stop-replication-consistency-group")
    wait_group(s, gid, lambda g: g["replication_status"] in ("active-stopped", "inactive"))
    wl = Workload({c.prod: regrant(s, c.prod)[:3] for c in couples}, region_bytes=128 << 20, seed=seed)
    wl.start()
    wl.wait_acks(300, timeout_s=60)
    wl.stop()
    assert not wl.errors, wl.errors
    return wl


def _check_data(stack: FaultStack, couples: list[Couple], wl: Workload, primary_az: str) -> None:
    s = stack.session
    for c in couples:
        src, dst = (c.prod, c.dr) if primary_az == AZ_A else (c.dr, c.prod)
        lost = verify(wl.logs[c.prod], c.prod, regrant(s, dst)[:3])
        assert not lost, f"{dst} lacks acknowledged writes of {src}: {lost[:3]}"


@pytest.mark.long
def test_agent_killed_mid_resync_and_mid_reprotect(fault_stack: FaultStack) -> None:
    s = fault_stack.session
    agents = fault_stack.agents
    n = trials(1)
    watched = 0
    for trial in range(n):
        gid, couples = make_group(s)
        with SplitBrainWatcher(fault_stack, couples) as watch:
            # Mid-resync: the primary's agent dies while the group copies.
            wl = _dirty(fault_stack, gid, couples, seed=trial)
            group_action(s, gid, "os-sync-replication-consistency-group")
            time.sleep(0.05 * (trial % 4))
            agents[AZ_A].kill()
            agents[AZ_A].start()
            _settle(s, gid, "os-sync-replication-consistency-group")
            _check_data(fault_stack, couples, wl, AZ_A)

            # Mid-reprotect: fail over (both up), then the new secondary dies while it is copied to.
            group_action(s, gid, "os-failover-replication-consistency-group")
            g = wait_group(s, gid, lambda g: g["status"] == "failovered", 120)
            target = AZ_B if g["priority_station"] == AZ_A else AZ_A
            group_action(s, gid, "os-reprotect-replication-consistency-group")
            time.sleep(0.05 * (trial % 3))
            agents[target].kill()
            agents[target].start()
            g = wait_group(s, gid, lambda g: g["status"] not in ("updating",), 120)
            if g["status"] == "failovered":  # a clean retry: the same action again
                group_action(s, gid, "os-reprotect-replication-consistency-group")
            wait_group(
                s, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active", 120
            )
        watched += watch.samples
        assert not watch.violations, f"two writable primaries: {watch.violations[:2]}"
        print(f"trial {trial}: {watch.samples} role samples, no two writable primaries")
    record(
        "agent_crash",
        trials=n,
        role_samples=watched,
        split_brain=0,
        mode=fault_stack.mode,
    )


def test_agent_killed_mid_switchover(fault_stack: FaultStack) -> None:
    s = fault_stack.session
    agents = fault_stack.agents
    gid, couples = make_group(s)
    with SplitBrainWatcher(fault_stack, couples) as watch:
        wl = _dirty(fault_stack, gid, couples, seed=50)
        group_action(s, gid, "os-sync-replication-consistency-group")
        wait_group(s, gid, lambda g: g["replication_status"] == "active", 120)
        # Mid-switchover: the demoted primary's agent dies while roles flip.
        group_action(s, gid, "os-reverse-replication-consistency-group")
        time.sleep(0.05)
        agents[AZ_A].kill()
        agents[AZ_A].start()
        g = wait_group(s, gid, lambda g: g["status"] not in ("reversing",), 120)
        if g["status"] == "error_reversing":  # aborted safely (see decisions.md); retry it
            print(f"switchover aborted after the agent crash ({g['failure_detail']}); retrying")
            group_action(s, gid, "os-reverse-replication-consistency-group")
            g = wait_group(s, gid, lambda g: g["status"] not in ("reversing",), 120)
        assert g["status"] == "available", f"switchover neither completed nor retried cleanly: {g}"
        g = _settle(s, gid, "os-sync-replication-consistency-group")

        _check_data(fault_stack, couples, wl, AZ_A if g["priority_station"] == AZ_A else AZ_B)
    assert not watch.violations, f"two writable primaries: {watch.violations[:2]}"
