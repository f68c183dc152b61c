"""Consistency groups split as one; failover, fencing and reprotect between two agents."""

from __future__ import annotations

import asyncio

import pytest

from openevs.agent.mirror.config import load_configs
from openevs.agent.nbd.errors import NbdError
from openevs.contract import AgentRequestFailed, ReplicationRequest
from openevs.domain.replication import Role
from tests.integration.mirror.support import (
    RECORD,
    MiB,
    PairedAgent,
    assert_one_point,
    connect,
    group_of_pairs,
    ordered_record,
    pair,
    records_found,
    write_blocks,
)
from tests.support.waiting import wait_for

EPERM = 1
RECORDS = 600


def test_group_splits_as_one_crash_consistent_point(
    agents: tuple[PairedAgent, PairedAgent],
) -> None:
    a, b = agents
    group_of_pairs(a, b, ("m1", "m2"), 8 * MiB)

    async def ordered_writes() -> None:
        m1 = await connect(a, "att-m1")
        m2 = await connect(a, "att-m2")
        for i in range(RECORDS):
            # Each write is acknowledged before the next one starts: m1's record i
            # happens-before m2's record i, which happens-before m1's record i+1.
            await m1.write(i * RECORD, ordered_record(i))
            await m2.write(i * RECORD, ordered_record(i))
            if i == RECORDS // 3:
                # Break m1's link only: its DR side is re-keyed (connections dropped).
                await asyncio.to_thread(
                    b.client.set_replication, "m1-dr",
                    ReplicationRequest(role=Role.SECONDARY, epoch=2, pair_id="p-m1", group_id="g1",
                                       link_export="link-m1-rekeyed"),
                )  # fmt: skip
        await m1.close()
        await m2.close()

    asyncio.run(ordered_writes())
    for vol in ("m1", "m2"):
        state = a.state(vol)
        assert state.replication_status == "inactive", state
        assert state.group_split and state.dirty_bytes > 0
    dr1 = records_found(b.image("m1-dr").read_bytes(), RECORDS)
    dr2 = records_found(b.image("m2-dr").read_bytes(), RECORDS)
    assert len(dr1) >= RECORDS // 3 and len(dr1) < RECORDS
    # The DR disks are one point in time: never m2's record i without m1's record i,
    # and never m1's record i+1 without m2's record i.
    assert_one_point(dr1, dr2)


def test_group_pause_resume(agents: tuple[PairedAgent, PairedAgent]) -> None:
    a, b = agents
    group_of_pairs(a, b, ("m1", "m2"), 8 * MiB)
    paused = a.client.pause_group("g1")
    assert {v.replication_status for v in paused.volumes} == {"active-stopped"}

    async def write() -> None:
        async with await connect(a, "att-m1") as nbd:
            await write_blocks(nbd, [0, 2 * MiB], 4096)

    asyncio.run(write())
    assert a.state("m1").replication_status == "inactive"
    assert a.state("m2").replication_status == "active-stopped"
    a.client.resume_group("g1")
    for vol in ("m1", "m2"):
        a.wait_status(vol, "active")
        assert a.checksum(vol) == b.checksum(f"{vol}-dr")
    with pytest.raises(AgentRequestFailed) as unknown:
        a.client.pause_group("nope")
    assert unknown.value.status == 404


def test_failover_fences_the_old_primary(agents: tuple[PairedAgent, PairedAgent]) -> None:
    a, b = agents
    a.client.create_volume("vol", 16 * MiB)
    b.client.create_volume("dr", 16 * MiB)
    a.client.grant_export("att", "vol", False)
    b.client.grant_export("att-dr", "dr", False)
    pair(a, b, "vol", "dr")
    a.wait_status("vol", "active")

    async def write(agent: PairedAgent, export: str, offsets: list[int]) -> None:
        async with await connect(agent, export) as nbd:
            await write_blocks(nbd, offsets, 64 * 1024)

    asyncio.run(write(a, "att", [0, MiB]))
    a.kill()  # the production AZ is lost

    # Failover: the DR disk becomes a writable primary at epoch 2; its peer is down.
    b.client.set_replication(
        "dr", ReplicationRequest(role=Role.PRIMARY, epoch=2, pair_id="p-vol",
                                 peer=a.peer("link-2"), mirroring=False),
    )  # fmt: skip
    asyncio.run(write(b, "att-dr", [4 * MiB, 5 * MiB]))
    state = b.state("dr")
    assert state.role == "primary" and state.replication_status == "inactive"
    assert state.dirty_bytes == 2 * 64 * 1024

    # The old primary comes back: fenced until the controller speaks.
    a.start()
    assert a.state("vol").fenced

    async def refused() -> None:
        async with await connect(a, "att") as nbd:
            with pytest.raises(NbdError) as err:
                await nbd.write(8 * MiB, b"z" * 4096)
            assert err.value.errno == EPERM

    asyncio.run(refused())
    # Demoted with the new epoch: still refused, and its bitmap is kept.
    a.client.set_replication(
        "vol", ReplicationRequest(role=Role.SECONDARY, epoch=2, pair_id="p-vol", link_export="link-2")
    )
    asyncio.run(refused())
    state = a.state("vol")
    assert state.role == "secondary" and state.fenced
    old_dirty = a.client.get_replication_dirty("vol")

    # Reprotect: resync from the new primary, including what the old one wrote alone.
    before = b.state("dr").resynced_bytes_total
    b.client.set_replication(
        "dr", ReplicationRequest(role=Role.PRIMARY, epoch=2, pair_id="p-vol", peer=a.peer("link-2"),
                                 mirroring=True, add_dirty=old_dirty.ranges),
    )  # fmt: skip
    state = b.wait_status("dr", "active")
    print(f"\nreprotect resynced {state.resynced_bytes_total - before} B")
    wait_for("checksums", lambda: a.checksum("vol") == b.checksum("dr"))


def test_batch_promotes_in_order_and_stops_at_the_first_refusal(
    agents: tuple[PairedAgent, PairedAgent],
) -> None:
    """POST /replication/batch (a group failover's promotes in one call): each config
    as its own PUT; a refusal answers that PUT's error and leaves the ones before it."""
    a, b = agents
    for vol in ("m1", "m2"):
        a.client.create_volume(vol, 8 * MiB)
        b.client.create_volume(f"{vol}-dr", 8 * MiB)
        pair(a, b, vol, f"{vol}-dr", link=f"link-{vol}", group_id="g1")
    for vol in ("m1", "m2"):
        a.wait_status(vol, "active")

    def promoted(vol: str, epoch: int = 2) -> tuple[str, ReplicationRequest]:
        return f"{vol}-dr", ReplicationRequest(
            role=Role.PRIMARY, epoch=epoch, pair_id=f"p-{vol}", group_id="g1",
            peer=a.peer(f"link-{vol}-2"), mirroring=False,
        )  # fmt: skip

    stale = promoted("m2", epoch=0)
    with pytest.raises(AgentRequestFailed) as refused:
        b.client.set_replication_batch([promoted("m1"), stale, promoted("m2")])
    assert refused.value.reason == "stale_epoch"
    assert b.state("m1-dr").role == "primary"
    assert b.state("m2-dr").role == "secondary"  # not reached
    assert saved(b) == {"m1-dr": (Role.PRIMARY, 2), "m2-dr": (Role.SECONDARY, 1)}

    states = b.client.set_replication_batch([promoted("m1"), promoted("m2")])  # m1 again: a no-op
    got = [(s.volume_id, s.role, s.epoch) for s in states]
    assert got == [("m1-dr", "primary", 2), ("m2-dr", "primary", 2)]
    # The group commit: every config renamed into place, no temporary file left.
    assert saved(b) == {"m1-dr": (Role.PRIMARY, 2), "m2-dr": (Role.PRIMARY, 2)}
    assert not list(b.pool.glob(".tmp-*"))


def test_a_failed_group_commit_is_written_again_by_the_next_put(
    agents: tuple[PairedAgent, PairedAgent],
) -> None:
    """The batch's config files are written at its end (one thread hop, one directory
    fsync). When that fails the batch is refused, and the same configs sent again (a
    no-op for the replicas, which took them) write the files: what is acknowledged is
    on disk."""
    a, b = agents
    for vol in ("m1", "m2"):
        a.client.create_volume(vol, 8 * MiB)
        b.client.create_volume(f"{vol}-dr", 8 * MiB)
        pair(a, b, vol, f"{vol}-dr", link=f"link-{vol}", group_id="g1")
    for vol in ("m1", "m2"):
        a.wait_status(vol, "active")

    def promoted(vol: str) -> tuple[str, ReplicationRequest]:
        return f"{vol}-dr", ReplicationRequest(
            role=Role.PRIMARY, epoch=2, pair_id=f"p-{vol}", group_id="g1",
            peer=a.peer(f"link-{vol}-2"), mirroring=False,
        )  # fmt: skip

    blocker = b.pool / ".tmp-m2-dr.repl.json"  # the temporary file cannot be opened: EISDIR
    blocker.mkdir()
    with pytest.raises(AgentRequestFailed):
        b.client.set_replication_batch([promoted("m1"), promoted("m2")])
    blocker.rmdir()
    assert saved(b)["m2-dr"] == (Role.SECONDARY, 1)  # not acknowledged, not on disk

    states = b.client.set_replication_batch([promoted("m1"), promoted("m2")])
    assert [(s.volume_id, s.role, s.epoch) for s in states] == [
        ("m1-dr", "primary", 2), ("m2-dr", "primary", 2)
    ]  # fmt: skip
    assert saved(b) == {"m1-dr": (Role.PRIMARY, 2), "m2-dr": (Role.PRIMARY, 2)}
    assert not list(b.pool.glob(".tmp-*"))


def saved(agent: PairedAgent) -> dict[str, tuple[Role, int]]:
    """The configs on disk (what the agent loads when it starts again)."""
    return {vol: (c.role, c.epoch) for vol, c in load_configs(agent.pool).items()}
