"""Cut the link between the AZs mid-workload, then restore it.

Production never stops (no write errors), the group splits consistently
(every member and the group inactive with fault_level "5", every member
split on the primary agent), and after the link returns the resync copies
about the dirty bytes and both sides hold the same bytes, every
acknowledged write included.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import (
    AZ_A,
    FaultStack,
    make_group,
    pair,
    record,
    trials,
    wait_group,
)
from tests.faults.workload import Workload, region_digest, verify

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

MIB = 1 << 20
REGION_MIB = 32  # so the resync figures are about the written regions, not noise


def _split_consistently(stack: FaultStack, gid: str, couples: list) -> bool:
    s = stack.session
    g = stack.session.get(f"/v2/{{p}}/os-vendor-replication-consistency-groups/{gid}").json()[
        "replication_consistency_group"
    ]
    pairs = [pair(s, c.pair_id) for c in couples]
    return (
        g["replication_status"] == "inactive"
        and g["fault_level"] == "5"
        and all(p["replication_status"] == "inactive" and p["fault_level"] == "5" for p in pairs)
    )


def test_link_cut_keeps_production_writing_and_resyncs_the_dirty_bytes(fault_stack: FaultStack) -> None:
    s = fault_stack.session
    n = trials(1)
    rows = []
    for trial in range(n):
        gid, couples = make_group(s)
        wl = Workload({c.prod: c.prod_addr[:3] for c in couples}, region_bytes=REGION_MIB * MIB,
                      seed=100 + trial, pace_s=0.005).start()  # fmt: skip
        wl.wait_acks(30)
        fault_stack.cut_link()
        t_cut = time.monotonic()
        wait_group(s, gid, lambda g: g["fault_level"] == "5", timeout_s=60)
        deadline = time.monotonic() + 30
        while not _split_consistently(fault_stack, gid, couples):
            assert time.monotonic() < deadline, "the group did not split consistently"
            time.sleep(0.1)
        # On the primary agent, every member is split (none still forwarding).
        with fault_stack.agents[AZ_A].client() as a:
            states = [a.get_replication(c.prod) for c in couples]
        assert all(not st.link_up and st.replication_status == "inactive" for st in states), states
        acks_before = wl.acks
        wl.wait_acks(acks_before + 40, timeout_s=30)  # production keeps writing while cut
        # Stop writing before the snapshot, so the dirty bytes are all the resync owes.
        wl.stop()
        assert not wl.errors, f"production stopped: {wl.errors}"
        with fault_stack.agents[AZ_A].client() as a:
            before = {c.prod: a.get_replication(c.prod) for c in couples}
        dirty = sum(st.dirty_bytes for st in before.values())
        fault_stack.restore_link()
        outage_s = time.monotonic() - t_cut
        g = wait_group(s, gid, lambda g: g["replication_status"] == "active" and g["fault_level"] == "0",
                       timeout_s=120)  # fmt: skip
        with fault_stack.agents[AZ_A].client() as a:
            after = {c.prod: a.get_replication(c.prod) for c in couples}
        resynced = sum(after[v].resynced_bytes_total - before[v].resynced_bytes_total for v in before)
        lost = []
        for c in couples:
            lost += verify(wl.logs[c.prod], c.prod, c.dr_addr[:3])
            assert region_digest(c.dr_addr[:3], REGION_MIB * MIB) == region_digest(
                c.prod_addr[:3], REGION_MIB * MIB
            ), "DR and production differ after the resync"
        assert not lost, lost[:5]
        print(f"trial {trial}: outage {outage_s:.1f}s, {wl.acks} writes, 0 errors, "
              f"dirty {dirty} B at restore, resynced {resynced} B")  # fmt: skip
        assert dirty > 0
        # Nothing is written after the snapshot: the resync copies the dirty regions.
        assert dirty <= resynced <= dirty + 4 * MIB, (
            dirty,
            resynced,
        )
        rows.append((dirty, resynced, g["status"]))
    record("link_cut", trials=n, write_errors=0, lost_writes=0,
           dirty_bytes=[r[0] for r in rows], resynced_bytes=[r[1] for r in rows],
           mode=fault_stack.mode)  # fmt: skip
