"""A DR drill end to end over NBD, with checksums, while a workload writes.

Two pairs in a consistency group; a writer writes ordered records to the two
production disks (record i of the first is acknowledged before record i of
the second, which is acknowledged before record i+1 of the first). While it
writes: a snapshot of one replicated (DR) disk, and `openevs group drill
--create-disks --wait`. Then: every drill disk is the DR disk at one instant
(its record area is byte for byte a prefix of the records, checked by
checksum), and across the group no record appears without every earlier one
(the group-consistency checker of the split, assert_one_point); the DR disks
kept replicating; `--cleanup --wait` removes the disks and snapshots.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from typing import Any

import pytest

from openevs.agent.nbd.client import NbdClient
from tests.e2e.conftest import ServeProcess, Session
from tests.e2e.test_cli import failing, ok, ok_json
from tests.e2e.test_replication import nbd_address
from tests.integration.mirror.support import RECORD, assert_one_point, ordered_record, records_found
from tests.support.api import make_disk, wait_group, wait_json
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

AZ_A, AZ_B = "az1.dc1", "az2.dc2"
RECORDS = 12_000  # the writer's limit (47 MiB of each disk)
GROUPS = "/v2/{p}/os-vendor-replication-consistency-groups"


class OrderedWriter:
    """Writes ordered records to two production disks in a thread, until stopped."""

    def __init__(self, first: tuple[str, int, str, bool], second: tuple[str, int, str, bool]) -> None:
        self.addrs = (first, second)
        self.written = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> OrderedWriter:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._write())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def _write(self) -> None:
        clients = [await NbdClient.connect(a[0], a[1], a[2]) for a in self.addrs]
        try:
            for i in range(RECORDS):
                if self._stop.is_set():
                    return
                for client in clients:
                    await client.write(i * RECORD, ordered_record(i))
                self.written = i + 1
        finally:
            for client in clients:
                await client.close()

    def wait_written(self, n: int, timeout_s: float = 60) -> None:
        wait_for(f"{n} records written", lambda: self.written >= n or self.error is not None, timeout_s)
        assert self.error is None, self.error

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(60)
        assert self.error is None, self.error
        return self.written


def read_records(session: Session, volume_id: str, az: str) -> bytes:
    host, port, export, _ = nbd_address(session, volume_id, az)

    async def go() -> bytes:
        chunk, total = 4 << 20, RECORDS * RECORD
        async with await NbdClient.connect(host, port, export) as client:
            parts = [bytes(await client.read(o, min(chunk, total - o))) for o in range(0, total, chunk)]
        return b"".join(parts)

    return asyncio.run(go())


def expected_area(found: int) -> str:
    """The checksum of a record area holding exactly records 0..found-1."""
    data = b"".join(ordered_record(i) for i in range(found)) + bytes((RECORDS - found) * RECORD)
    return hashlib.sha256(data).hexdigest()


def detach(session: Session, volume_id: str) -> None:
    volume = wait_json(session, f"/v2/{{p}}/volumes/{volume_id}", "volume", lambda v: True)
    for att in volume["attachments"]:
        r = session.delete(f"/v2.1/{{p}}/servers/{att['server_id']}/os-volume_attachments/{volume_id}")
        assert r.status_code == 202, r.text
    wait_json(session, f"/v2/{{p}}/volumes/{volume_id}", "volume", lambda v: v["status"] == "available")


def make_group(s: Session) -> tuple[str, list[tuple[str, str]]]:
    couples = [(make_disk(s, AZ_A), make_disk(s, AZ_B)) for _ in range(2)]
    pair_ids = []
    for prod, dr in couples:
        body = {"replication": {"volume_ids": [prod, dr], "priority_station": AZ_A,
                                "replication_model": "hypermetro"}}  # fmt: skip
        r = s.post("/v2/{p}/os-vendor-replications", body)
        assert r.status_code == 202, r.text
        pair_ids.append(r.json()["replication"]["id"])
    for pid in pair_ids:
        wait_json(s, f"/v2/{{p}}/os-vendor-replications/{pid}", "replication",
                  lambda p: p["replication_status"] == "active", 90)  # fmt: skip
    body = {
        "replication_consistency_group": {
            "name": "drill",
            "replication_ids": pair_ids,
            "priority_station": AZ_A,
            "replication_model": "hypermetro",
        }
    }
    r = s.post(GROUPS, body)
    assert r.status_code == 202, r.text
    gid = str(r.json()["replication_consistency_group"]["id"])
    wait_group(s, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active")
    return gid, couples


@pytest.mark.long  # about a minute; the agent side's short case: integration/mirror/test_group_drill.py
def test_a_drill_under_a_workload_is_one_point_of_the_group(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    serve = serve_factory("serve").start()
    env, s = serve.client_env(), serve.login()
    gid, couples = make_group(s)
    (p1, d1), (p2, d2) = couples
    writer = OrderedWriter(nbd_address(s, p1, AZ_A), nbd_address(s, p2, AZ_A)).start()
    writer.wait_written(300)

    # A snapshot of one replicated disk, and the group's drill, while the writer writes.
    r = s.post("/v2/{p}/snapshots", {"snapshot": {"volume_id": d1, "force": True, "name": "dr-snap"}})
    assert r.status_code == 202, r.text
    single = r.json()["snapshot"]["id"]
    drill: dict[str, Any] = ok_json(env, "group", "drill", gid, "--create-disks", "--wait",
                                    "--timeout", "180")  # fmt: skip
    at_drill = writer.written
    assert drill["status"] == "available" and drill["create_disks"] is True, drill
    members = {m["dr_volume_id"]: m for m in drill["members"]}
    assert set(members) == {d1, d2} and all(m["volume_status"] == "available" for m in members.values())
    refused = s.post(f"{GROUPS}/{gid}/drill", None)
    assert refused.status_code == 409, refused.text
    wait_json(s, f"/v2/{{p}}/snapshots/{single}", "snapshot", lambda x: x["status"] == "available")
    writer.wait_written(at_drill + 200)
    written = writer.stop()

    # Every drill disk is its DR disk at one instant; the group's disks at the same one.
    first = records_found(read_records(s, members[d1]["volume_id"], AZ_B), RECORDS)
    second_data = read_records(s, members[d2]["volume_id"], AZ_B)
    second = records_found(second_data, RECORDS)
    assert 300 <= len(first) < written, (len(first), written)
    assert_one_point(first, second)
    assert hashlib.sha256(second_data).hexdigest() == expected_area(len(second))

    # The replicated disk's own snapshot, read through a disk made from it: one instant of it.
    r = s.post("/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": AZ_B, "snapshot_id": single}})
    assert r.status_code == 202, r.text
    from_single = r.json()["volume"]["id"]
    wait_json(s, f"/v2/{{p}}/volumes/{from_single}", "volume", lambda v: v["status"] == "available", 120)
    alone = records_found(read_records(s, from_single, AZ_B), RECORDS)
    assert 300 <= len(alone) < written and alone == set(range(len(alone)))

    # Replication went on meanwhile: the DR disks hold every record.
    g = wait_group(s, gid, lambda g: g["replication_status"] == "active")
    assert g["status"] == "available"
    for dr in (d1, d2):
        assert records_found(read_records(s, dr, AZ_B), RECORDS) == set(range(written))

    # The cleanup: refused while a drill disk is attached; then the disks, the snapshots, the drill.
    refused_cleanup = failing(env, "group", "drill", gid, "--cleanup")
    assert "detach it first" in refused_cleanup.stderr, refused_cleanup.stderr
    for m in members.values():
        detach(s, m["volume_id"])
    done = ok(env, "group", "drill", gid, "--cleanup", "--wait", "--timeout", "120")
    assert "cleaned up" in done.stderr, done.stderr
    assert s.get(f"{GROUPS}/{gid}/drill").status_code == 404
    for m in members.values():
        assert s.get(f"/v2/{{p}}/snapshots/{m['snapshot_id']}").status_code == 404
        assert s.get(f"/v2/{{p}}/volumes/{m['volume_id']}").status_code == 404
