"""Snapshots through unchanged OpenStack clients against the real `openevs serve`:
openstacksdk's block-storage v2 snapshot calls and python-openstackclient's
`volume snapshot create/list/show/delete` and `volume create --snapshot` (v2 pinned).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from openstack import exceptions as os_exc

from tests.e2e.conftest import ServeProcess
from tests.e2e.test_clients import _osc, conn, wait_volume  # noqa: F401 - conn is a fixture
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]


def test_openstacksdk_snapshot_calls(conn: Any) -> None:  # noqa: F811 - the fixture
    volume = conn.block_storage.create_volume(size=1, availability_zone="az1.dc1", name="sdk-src")
    wait_volume(conn, volume.id, lambda v: v.status == "available", "available")
    snap = conn.block_storage.create_snapshot(volume_id=volume.id, name="sdk-snap", description="d")
    snap = conn.block_storage.wait_for_status(snap, status="available", wait=30)
    assert (snap.name, snap.volume_id, snap.size) == ("sdk-snap", volume.id, 1)
    assert snap.id in [s.id for s in conn.block_storage.snapshots(details=True)]
    assert conn.block_storage.get_snapshot(snap.id).status == "available"
    made = conn.block_storage.create_volume(size=1, availability_zone="az1.dc1", snapshot_id=snap.id)
    made = wait_volume(conn, made.id, lambda v: v.status == "available", "available")
    assert made.snapshot_id == snap.id
    conn.block_storage.delete_volume(made.id)
    conn.block_storage.delete_snapshot(snap.id)

    def gone() -> bool:
        try:
            conn.block_storage.get_snapshot(snap.id)
        except os_exc.NotFoundException:
            return True
        return False

    wait_for(f"snapshot {snap.id} gone", gone, 30)
    conn.block_storage.delete_volume(volume.id)


def test_openstackclient_snapshot_commands(shared_serve: ServeProcess) -> None:
    v2 = ("--os-volume-api-version", "2")
    name = f"osc-{uuid.uuid4().hex[:8]}"
    src = _osc(shared_serve, *v2, "volume", "create", "--size", "1", "--availability-zone", "az1.dc1",
               name, "-f", "json")["id"]  # fmt: skip
    session = shared_serve.login()

    def status(path: str, key: str) -> str:
        return str(session.get(path).json()[key]["status"])

    wait_for("source available", lambda: status(f"/v2/{{p}}/volumes/{src}", "volume") == "available")
    snap = _osc(shared_serve, *v2, "volume", "snapshot", "create", "--volume", src, f"{name}-s",
                "-f", "json")["id"]  # fmt: skip
    wait_for("snapshot available", lambda: status(f"/v2/{{p}}/snapshots/{snap}", "snapshot") == "available")
    listed = _osc(shared_serve, *v2, "volume", "snapshot", "list", "-f", "json")
    assert snap in [row["ID"] for row in listed]
    shown = _osc(shared_serve, *v2, "volume", "snapshot", "show", snap, "-f", "json")
    assert (shown["id"], shown["volume_id"], shown["status"]) == (snap, src, "available")
    made = _osc(shared_serve, *v2, "volume", "create", "--snapshot", snap, "--size", "1",
                "--availability-zone", "az1.dc1", f"{name}-c", "-f", "json")["id"]  # fmt: skip
    wait_for("disk from snapshot", lambda: status(f"/v2/{{p}}/volumes/{made}", "volume") == "available")
    _osc(shared_serve, *v2, "volume", "delete", made)
    _osc(shared_serve, *v2, "volume", "snapshot", "delete", snap)
    wait_for("snapshot gone", lambda: session.get(f"/v2/{{p}}/snapshots/{snap}").status_code == 404)
    _osc(shared_serve, *v2, "volume", "delete", src)
    session.client.close()
