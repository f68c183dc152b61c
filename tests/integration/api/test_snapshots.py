"""EVS snapshots over the API, as the snapshot pages document them, on real agents:
shapes and statuses, lists with filters and pagination, update, metadata,
force for attached disks, quota, the delete rules, other projects, and
disks made from snapshots and clones whose bytes are checked over NBD.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.api.conftest import EVS_TIME, assert_fault, attach, create_server, second_project
from tests.integration.conftest import Api

SNAPSHOTS = "/v2/{p}/snapshots"
MiB = 1 << 20


def create_snapshot(api: Api, volume_id: str, **extra: Any) -> dict[str, Any]:
    r = api.post(SNAPSHOTS, {"snapshot": {"volume_id": volume_id, **extra}})
    assert r.status_code == 202, r.text
    sid = r.json()["snapshot"]["id"]
    r = api.wait(f"{SNAPSHOTS}/{sid}", lambda r: r.json()["snapshot"]["status"] != "creating")
    return dict(r.json()["snapshot"])


def delete_snapshot(api: Api, sid: str) -> None:
    assert api.delete(f"{SNAPSHOTS}/{sid}").status_code == 202
    api.wait(f"{SNAPSHOTS}/{sid}", lambda r: r.status_code == 404)


def test_create_show_list_update_delete(api: Api) -> None:
    vol = api.create_volume(size=2, name="src")
    r = api.post(SNAPSHOTS, {"snapshot": {"volume_id": vol["id"], "name": "snap-001",
                                          "description": "Daily backup", "metadata": {"k": "v"}}})
    assert r.status_code == 202, r.text
    made = r.json()["snapshot"]
    assert made["status"] == "creating" and made["size"] == 2 and made["volume_id"] == vol["id"]
    snap = api.wait(f"{SNAPSHOTS}/{made['id']}", lambda r: r.json()["snapshot"]["status"] == "available")
    shown = snap.json()["snapshot"]
    types = {"id": str, "status": str, "name": str, "description": str, "created_at": str,
             "metadata": dict, "volume_id": str, "size": int,
             "os-extended-snapshot-attributes:progress": str,
             "os-extended-snapshot-attributes:project_id": str}
    for key, kind in types.items():
        assert isinstance(shown[key], kind), (key, shown)
    assert EVS_TIME.match(shown["created_at"]) and shown["metadata"] == {"k": "v"}
    assert shown["os-extended-snapshot-attributes:progress"] == "100%"
    assert shown["os-extended-snapshot-attributes:project_id"] == api.project_id
    assert [s.snapshot_id for s in api.runtime.agent("az1.dc1").list_snapshots(vol["id"])] == [made["id"]]

    brief = api.get(SNAPSHOTS).json()
    assert [s["id"] for s in brief["snapshots"]] == [made["id"]]
    assert "os-extended-snapshot-attributes:progress" not in brief["snapshots"][0]
    detail = api.get(f"{SNAPSHOTS}/detail?status=available").json()["snapshots"]
    assert detail[0]["os-extended-snapshot-attributes:progress"] == "100%"
    assert api.get(f"{SNAPSHOTS}/detail?status=error").json()["snapshots"] == []
    assert api.get(f"{SNAPSHOTS}?volume_id={vol['id']}").json()["snapshots"][0]["id"] == made["id"]
    assert api.get(f"{SNAPSHOTS}?name=nope").json()["snapshots"] == []

    r = api.put(f"{SNAPSHOTS}/{made['id']}", {"snapshot": {"name": "snap-002", "description": "weekly"}})
    assert r.status_code == 200, r.text
    assert (r.json()["snapshot"]["name"], r.json()["snapshot"]["description"]) == ("snap-002", "weekly")
    assert EVS_TIME.match(r.json()["snapshot"]["updated_at"])
    assert_fault(api.put(f"{SNAPSHOTS}/{made['id']}", {"snapshot": {"size": 3}}), 400, "badRequest")
    assert_fault(api.put(f"{SNAPSHOTS}/{made['id']}", {"snapshot": {"name": "autobk_snapshot_x"}}), 400,
                 mentions="reserved")

    # A disk with snapshots cannot be deleted.
    assert_fault(api.delete(f"/v2/{{p}}/volumes/{vol['id']}"), 400, "badRequest", mentions="snapshot")
    delete_snapshot(api, made["id"])
    assert api.runtime.agent("az1.dc1").list_snapshots(vol["id"]) == []
    assert api.delete(f"/v2/{{p}}/volumes/{vol['id']}").status_code == 202


def test_pagination_filters_and_offset(api: Api) -> None:
    vol = api.create_volume(size=1)
    ids = [create_snapshot(api, vol["id"], name=f"s{i}")["id"] for i in range(4)]
    r = api.get(f"{SNAPSHOTS}?limit=2").json()
    assert len(r["snapshots"]) == 2 and r["snapshots_links"][0]["rel"] == "next"
    marker = r["snapshots"][-1]["id"]
    rest = api.get(f"{SNAPSHOTS}?limit=2&marker={marker}").json()["snapshots"]
    assert {s["id"] for s in r["snapshots"] + rest} == set(ids)
    assert "snapshots_links" not in api.get(SNAPSHOTS).json()
    by_offset = api.get(f"{SNAPSHOTS}/detail?offset=1&limit=2&sort_key=name&sort_dir=asc").json()["snapshots"]
    assert [s["name"] for s in by_offset] == ["s1", "s2"]
    assert_fault(api.get(f"{SNAPSHOTS}?limit=0"), 400, error_code="EVS.1023")
    assert_fault(api.get(f"{SNAPSHOTS}?marker=nope"), 404)
    assert_fault(api.get(f"{SNAPSHOTS}?sort_key=secret"), 400, error_code="EVS.1039")
    for sid in ids:
        delete_snapshot(api, sid)


def test_metadata_routes(api: Api) -> None:
    vol = api.create_volume(size=1)
    sid = create_snapshot(api, vol["id"], metadata={"a": "1"})["id"]
    meta = f"{SNAPSHOTS}/{sid}/metadata"
    assert api.get(meta).json() == {"metadata": {"a": "1"}}
    r = api.post(meta, {"metadata": {"b": "2"}})
    assert r.status_code == 200 and r.json() == {"metadata": {"a": "1", "b": "2"}}
    r = api.put(meta, {"metadata": {"c": "3"}})
    assert r.status_code == 200 and r.json() == {"metadata": {"c": "3"}}
    assert api.get(f"{meta}/c").json() == {"meta": {"c": "3"}}
    r = api.put(f"{meta}/c", {"meta": {"c": "4"}})
    assert r.status_code == 200 and r.json() == {"meta": {"c": "4"}}
    assert_fault(api.put(f"{meta}/c", {"meta": {"d": "4"}}), 400, mentions="one key")
    assert_fault(api.get(f"{meta}/nope"), 404, "itemNotFound")
    assert api.delete(f"{meta}/c").status_code == 200
    assert api.get(meta).json() == {"metadata": {}}
    assert_fault(api.delete(f"{meta}/c"), 404)
    assert_fault(api.post(meta, {"metadata": {"k": 1}}), 400)
    assert_fault(api.post(meta, {"meta": {"k": "v"}}), 400)
    delete_snapshot(api, sid)


def test_force_other_projects_and_refusals(api: Api) -> None:
    vol = api.create_volume(size=1)
    server = create_server(api)
    assert attach(api, server["id"], vol["id"]).status_code == 200
    api.wait(f"/v2/{{p}}/volumes/{vol['id']}", lambda r: r.json()["volume"]["status"] == "in-use")
    assert_fault(api.post(SNAPSHOTS, {"snapshot": {"volume_id": vol["id"]}}), 400, mentions="force")
    sid = create_snapshot(api, vol["id"], force=True)["id"]
    assert api.get(f"{SNAPSHOTS}/{sid}").json()["snapshot"]["status"] == "available"

    other = second_project(api)
    assert other.get(SNAPSHOTS).json()["snapshots"] == []
    assert_fault(other.get(f"{SNAPSHOTS}/{sid}"), 404, "itemNotFound")
    assert_fault(other.delete(f"{SNAPSHOTS}/{sid}"), 404)
    assert_fault(other.put(f"{SNAPSHOTS}/{sid}", {"snapshot": {"name": "x"}}), 404)
    assert_fault(other.get(f"{SNAPSHOTS}/{sid}/metadata"), 404)
    assert_fault(other.post(SNAPSHOTS, {"snapshot": {"volume_id": vol["id"]}}), 404)
    assert_fault(other.post("/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": "az1.dc1",
                                                           "snapshot_id": sid}}), 404)

    assert_fault(api.post(SNAPSHOTS, {"snapshot": {"volume_id": "nope"}}), 404)
    assert_fault(api.post(SNAPSHOTS, {"snapshot": {}}), 400)
    assert_fault(api.post(SNAPSHOTS, {"snapshot": {"volume_id": vol["id"], "force": True,
                                                   "name": "n" * 256}}), 400, mentions="name")
    assert_fault(api.post("/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": "az2.dc2",
                                                         "snapshot_id": sid}}), 400, error_code="EVS.2054")
    delete_snapshot(api, sid)


def test_snapshot_quota(controller_factory: Callable[..., Api]) -> None:
    api = controller_factory(quota_snapshots=2)
    vol = api.create_volume(size=1)
    ids = [create_snapshot(api, vol["id"])["id"] for _ in range(2)]
    assert_fault(api.post(SNAPSHOTS, {"snapshot": {"volume_id": vol["id"]}}), 413, "overLimit",
                 mentions="quota")
    delete_snapshot(api, ids[0])
    ids[0] = create_snapshot(api, vol["id"])["id"]
    r = api.delete(f"/v2/{{p}}/volumes/{vol['id']}?cascade=true")
    assert r.status_code == 202, r.text
    api.wait(f"/v2/{{p}}/volumes/{vol['id']}", lambda r: r.status_code == 404)
    assert api.get(SNAPSHOTS).json()["snapshots"] == []


# -- bytes over NBD ------------------------------------------------------------------

needs_nbd = pytest.mark.skipif(not shutil.which("nbdcopy"), reason="needs nbdcopy")


def nbd(api: Api, volume_id: str, az: str = "az1.dc1") -> str:
    """A writable NBD export of the disk, granted on its agent (as an attachment would)."""
    agent = api.runtime.agent(az)
    name = f"test-{volume_id}"
    agent.grant_export(name, volume_id, False)
    return f"nbd://127.0.0.1:{agent.health().nbd_port}/{name}"


def copy(src: str, dst: str) -> None:
    done = subprocess.run(["nbdcopy", src, dst], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def checksum(api: Api, volume_id: str, tmp: Path) -> str:
    out = tmp / f"{volume_id}.raw"
    copy(nbd(api, volume_id), str(out))
    return hashlib.sha256(out.read_bytes()).hexdigest()


def pattern(path: Path, seed: int, size: int) -> Path:
    rng = random.Random(seed)
    data = bytearray(size)
    for start in range(0, size, MiB):
        if rng.random() < 0.5:
            data[start : start + 64 * 1024] = rng.randbytes(64 * 1024)
    path.write_bytes(bytes(data))
    return path


@needs_nbd
def test_disks_from_a_snapshot_and_clones_hold_its_bytes(api: Api, tmp_path: Path) -> None:
    gib = 1 << 30
    vol = api.create_volume(size=1)
    a = pattern(tmp_path / "a.raw", 1, gib)
    copy(str(a), nbd(api, vol["id"]))
    sum_a = checksum(api, vol["id"], tmp_path)
    sid = create_snapshot(api, vol["id"])["id"]
    b = pattern(tmp_path / "b.raw", 2, gib)
    copy(str(b), nbd(api, vol["id"]))
    sum_b = checksum(api, vol["id"], tmp_path)
    assert sum_a != sum_b

    base = {"availability_zone": "az1.dc1"}
    assert_fault(api.post("/v2/{p}/volumes", {"volume": {**base, "size": 1, "snapshot_id": "nope"}}), 404)
    from_snap = api.create_volume(size=1, snapshot_id=sid, name="from-snap")
    assert from_snap["status"] == "available" and from_snap["snapshot_id"] == sid
    assert checksum(api, from_snap["id"], tmp_path) == sum_a
    clone = api.create_volume(size=2, source_volid=vol["id"], name="clone")
    assert clone["status"] == "available" and clone["source_volid"] == vol["id"]
    out = tmp_path / "clone.raw"
    copy(nbd(api, clone["id"]), str(out))
    with out.open("rb") as fh:
        assert hashlib.sha256(fh.read(gib)).hexdigest() == sum_b
        assert fh.read(gib) == bytes(gib)
    assert api.runtime.agent("az1.dc1").list_snapshots(vol["id"])[0].snapshot_id == sid  # clone's gone
    for volume in (from_snap, clone):
        assert api.delete(f"/v2/{{p}}/volumes/{volume['id']}").status_code == 202
    delete_snapshot(api, sid)


@needs_nbd
def test_rollback_brings_the_snapshot_bytes_back(api: Api, tmp_path: Path) -> None:
    size = 64 * MiB
    vol = api.create_volume(size=1)
    copy(str(pattern(tmp_path / "a.raw", 3, size)), nbd(api, vol["id"]))
    sum_a = checksum(api, vol["id"], tmp_path)
    s1 = create_snapshot(api, vol["id"])["id"]
    copy(str(pattern(tmp_path / "b.raw", 4, size)), nbd(api, vol["id"]))
    s2 = create_snapshot(api, vol["id"])["id"]
    sum_b = checksum(api, vol["id"], tmp_path)
    copy(str(pattern(tmp_path / "c.raw", 5, size)), nbd(api, vol["id"]))

    rollback = f"/v3/{{p}}/os-vendor-snapshots/{s1}/rollback"
    assert_fault(api.post(rollback, {"rollback": {"volume_id": "other"}}), 400, mentions="own disk")
    assert_fault(api.post(rollback, {"rollback": {}}), 400)
    assert_fault(api.post("/v3/{p}/os-vendor-snapshots/nope/rollback",
                          {"rollback": {"volume_id": vol["id"]}}), 404)
    r = api.post(rollback, {"rollback": {"name": "x", "volume_id": vol["id"]}})
    assert r.status_code == 202, r.text
    assert r.json() == {"rollback": {"volume_id": vol["id"]}}
    api.wait(f"/v2/{{p}}/volumes/{vol['id']}", lambda r: r.json()["volume"]["status"] == "available")
    api.wait(f"{SNAPSHOTS}/{s1}", lambda r: r.json()["snapshot"]["status"] == "available")
    assert checksum(api, vol["id"], tmp_path) == sum_a
    # The newer snapshot still holds what the disk had when it was taken.
    from_s2 = api.create_volume(size=1, snapshot_id=s2)
    assert checksum(api, from_s2["id"], tmp_path) == sum_b

    server = create_server(api)
    assert attach(api, server["id"], vol["id"]).status_code == 200
    api.wait(f"/v2/{{p}}/volumes/{vol['id']}", lambda r: r.json()["volume"]["status"] == "in-use")
    assert_fault(api.post(rollback, {"rollback": {"volume_id": vol["id"]}}), 400, mentions="detach")
    assert api.delete(f"/v2/{{p}}/volumes/{from_s2['id']}").status_code == 202
    for sid in (s1, s2):
        delete_snapshot(api, sid)
