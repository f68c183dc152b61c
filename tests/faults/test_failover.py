"""Kill the primary agent mid-workload, fail the group over: RPO 0, and how fast.

Each trial builds a fresh group of two pairs, writes to both production
disks through NBD, SIGKILLs the production AZ's agent while writes are in
flight, and fails the group over at once. Every write acknowledged before
the kill must be on the DR disks (now primaries). The time from the kill to
the first NBD write the DR disk accepts is the failover time.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from openevs.agent.nbd.client import NbdClient
from tests.faults.harness import (
    AZ_A,
    FaultStack,
    group_action,
    make_group,
    record,
    regrant,
    trials,
    wait_group,
)
from tests.faults.workload import Workload, verify

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

PROBE_OFFSET = 512 << 20  # outside the workload's region


async def _try_write(addr: tuple[str, int, str, bool]) -> bool:
    try:
        client = await NbdClient.connect(addr[0], addr[1], addr[2])
    except Exception:  # noqa: BLE001 - not yet reachable
        return False
    try:
        await client.write(PROBE_OFFSET, b"\x5a" * 4096)
        return True
    except Exception:  # noqa: BLE001 - refused (still read-only or fenced)
        return False
    finally:
        client.abort()


def test_kill_primary_agent_then_failover_loses_no_acknowledged_write(fault_stack: FaultStack) -> None:
    s, agent_a = fault_stack.session, fault_stack.agents[AZ_A]
    n = trials(2)
    lost_total, times_ms, acks_total = 0, [], 0
    for trial in range(n):
        gid, couples = make_group(s)
        wl = Workload({c.prod: c.prod_addr[:3] for c in couples}, seed=trial).start()
        wl.wait_acks(40 + trial % 7 * 10)
        agent_a.kill()
        t_kill = time.monotonic()
        wl.stop()
        group_action(s, gid, "os-failover-replication-consistency-group")

        def dr_writable(dr_disk: str = couples[0].dr) -> bool:
            addr = regrant(s, dr_disk)
            return not addr[3] and asyncio.run(_try_write(addr))

        deadline = t_kill + 60
        while not dr_writable():
            assert time.monotonic() < deadline, "the DR disk never became writable"
            time.sleep(0.02)
        took_ms = (time.monotonic() - t_kill) * 1000
        wait_group(s, gid, lambda g: g["status"] == "failovered")
        lost = []
        for c in couples:
            lost += verify(wl.logs[c.prod], c.prod, regrant(s, c.dr)[:3])
        lost_total += len(lost)
        acks_total += wl.acks
        times_ms.append(took_ms)
        print(f"trial {trial}: {wl.acks} acked writes, {len(lost)} lost, DR writable after {took_ms:.0f} ms")
        assert not lost, f"acknowledged writes missing on the new primary: {lost[:5]}"
        agent_a.start()  # the old primary comes back (fenced) for the next trial
    record(
        "failover", trials=n, acked_writes=acks_total, lost_writes=lost_total,
        failover_ms_median=round(statistics.median(times_ms)), failover_ms_max=round(max(times_ms)),
        mode=fault_stack.mode,
    )  # fmt: skip
