"""A DR drill's group snapshot on the DR agent while replication goes on: the
snapshots of the group's DR disks are one crash-consistent point in time
(the group-consistency checker of the split, support.assert_one_point), the
writes after it still reach the DR disks, and asking again is success."""

from __future__ import annotations

import asyncio

import pytest

from openevs.contract import AgentRequestFailed
from openevs.contract_snapshots import GroupSnapshotMember, GroupSnapshotRequest
from tests.integration.mirror.support import (
    RECORD,
    MiB,
    PairedAgent,
    assert_one_point,
    connect,
    group_of_pairs,
    ordered_record,
    records_found,
)

RECORDS = 2000
AFTER = 100  # records written after the snapshot returned


def _request(tag: str) -> GroupSnapshotRequest:
    return GroupSnapshotRequest(
        members=[GroupSnapshotMember(volume_id=f"{v}-dr", snapshot_id=f"{tag}-{v}") for v in ("m1", "m2")]
    )


async def _read(agent: PairedAgent, export: str, length: int) -> bytes:
    async with await connect(agent, export) as nbd:
        return bytes(await nbd.read(0, length))


def test_a_drill_snapshots_the_dr_disks_at_one_instant(agents: tuple[PairedAgent, PairedAgent]) -> None:
    a, b = agents
    group_of_pairs(a, b, ("m1", "m2"), 16 * MiB)

    async def ordered_writes_with_a_drill() -> int:
        m1, m2 = await connect(a, "att-m1"), await connect(a, "att-m2")
        drill: asyncio.Task[object] | None = None
        written, stop_at = 0, RECORDS
        for i in range(RECORDS):
            await m1.write(i * RECORD, ordered_record(i))
            await m2.write(i * RECORD, ordered_record(i))
            written = i + 1
            if i == RECORDS // 4:
                drill = asyncio.create_task(asyncio.to_thread(b.client.create_group_snapshot, _request("d")))
            if drill is not None and drill.done() and stop_at == RECORDS:
                stop_at = i + AFTER
            if i >= stop_at:
                break
        assert drill is not None
        await drill
        await m1.flush()  # the DR disk files (read below) hold what their overlays had pending
        await m2.flush()
        await m1.close()
        await m2.close()
        return written

    written = asyncio.run(ordered_writes_with_a_drill())
    assert written < RECORDS, "the snapshot outlasted the workload"
    for vol in ("m1", "m2"):
        b.client.grant_snapshot_export(f"snap-{vol}", f"{vol}-dr", f"d-{vol}")
    snap1 = records_found(asyncio.run(_read(b, "snap-m1", RECORDS * RECORD)), RECORDS)
    snap2 = records_found(asyncio.run(_read(b, "snap-m2", RECORDS * RECORD)), RECORDS)
    assert RECORDS // 4 < len(snap1) < written, (len(snap1), written)
    assert_one_point(snap1, snap2)
    # Replication went on: the DR disks hold every record, and equal production.
    for vol in ("m1", "m2"):
        assert a.state(vol).replication_status == "active"
        assert records_found(b.image(f"{vol}-dr").read_bytes(), RECORDS) == set(range(written))
        assert a.checksum(vol) == b.checksum(f"{vol}-dr")
    # Asking again answers the same snapshots; a snapshot is never replaced.
    again = b.client.create_group_snapshot(_request("d"))
    assert [s.snapshot_id for s in again] == ["d-m1", "d-m2"]
    assert records_found(asyncio.run(_read(b, "snap-m1", RECORDS * RECORD)), RECORDS) == snap1


def test_a_group_snapshot_after_a_crash_between_members_is_taken_anew(
    agents: tuple[PairedAgent, PairedAgent],
) -> None:
    _, b = agents
    for vol in ("m1", "m2"):
        b.client.create_volume(f"{vol}-dr", 4 * MiB)
    # What a crash between the two members' chain.json leaves: only m1 has it.
    b.client.create_snapshot("m1-dr", "d-m1")
    taken = b.client.create_group_snapshot(_request("d"))
    assert [(s.volume_id, s.snapshot_id) for s in taken] == [("m1-dr", "d-m1"), ("m2-dr", "d-m2")]
    assert [s.snapshot_id for s in b.client.list_snapshots("m1-dr")] == ["d-m1"]
    # Bad requests are refused with a 4xx, nothing taken.
    member = GroupSnapshotMember
    twice = GroupSnapshotRequest(members=[member(volume_id="m1-dr", snapshot_id=s) for s in ("x1", "x2")])
    missing = GroupSnapshotRequest(
        members=[member(volume_id="m2-dr", snapshot_id="y"), member(volume_id="nope", snapshot_id="y")]
    )
    for bad in (twice, missing):
        with pytest.raises(AgentRequestFailed) as refused:
            b.client.create_group_snapshot(bad)
        assert 400 <= refused.value.status < 500
    assert [s.snapshot_id for s in b.client.list_snapshots("m2-dr")] == ["d-m2"]
