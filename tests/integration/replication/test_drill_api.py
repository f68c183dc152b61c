"""The DR drill routes on a live controller with real agents: start, show, the
refusals (no 5xx), other projects (404), the snapshot quota (413), a drill
with disks, a group that cannot be deleted while drilled, and the cleanup."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.api.conftest import assert_fault, second_project
from tests.integration.conftest import Api
from tests.integration.replication.test_group_api import GROUPS, group_body, make_pairs
from tests.support.api import wait_group


def make_group(api: Api, n: int = 2) -> str:
    r = api.post(GROUPS, group_body(make_pairs(api, n)))
    assert r.status_code == 202, r.text
    gid = str(r.json()["replication_consistency_group"]["id"])
    wait_group(api, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active")
    return gid


def drill_of(api: Api, gid: str, status: str) -> dict:  # type: ignore[type-arg]
    r = api.wait(f"{GROUPS}/{gid}/drill", lambda r: r.json()["drill"]["status"] == status, 60)
    return dict(r.json()["drill"])


def test_drill_start_show_refusals_and_cleanup(api: Api) -> None:
    gid = make_group(api)
    path = f"{GROUPS}/{gid}/drill"
    assert_fault(api.get(path), 404, "itemNotFound", mentions="no drill")
    for bad in ({"drill": {"create_disks": "yes"}}, {"drill": {"x": 1}}, {"nope": {}}, [], "x"):
        assert_fault(api.post(path, bad), 400)
    assert_fault(api.post(f"{GROUPS}/nope/drill", None), 404)

    r = api.post(path, {"drill": {}})
    assert r.status_code == 202, r.text
    assert r.json()["drill"]["status"] == "creating"
    drill = drill_of(api, gid, "available")
    assert drill["taken_at"] and drill["create_disks"] is False and drill["availability_zone"] == "az2.dc2"
    assert len(drill["members"]) == 2
    assert all(m["snapshot_status"] == "available" and m["volume_id"] is None for m in drill["members"])
    snaps = {s["id"]: s for s in api.get("/v2/{p}/snapshots").json()["snapshots"]}
    assert {m["snapshot_id"] for m in drill["members"]} <= set(snaps)
    assert_fault(api.post(path, None), 409, mentions="has a drill already")
    assert_fault(api.delete(f"{GROUPS}/{gid}"), 400)  # members first, and the drill

    other = second_project(api)
    assert_fault(other.get(path), 404)
    assert_fault(other.post(path, None), 404)
    assert_fault(other.delete(path), 404)

    assert api.delete(path).status_code == 202
    assert api.delete(path).status_code == 202  # asked again while deleting: the same
    api.wait(path, lambda r: r.status_code == 404, 60)
    for m in drill["members"]:
        assert api.get(f"/v2/{{p}}/snapshots/{m['snapshot_id']}").status_code == 404


def test_drill_with_disks_and_the_snapshot_quota(controller_factory: Callable[..., Api]) -> None:
    api = controller_factory(quota_snapshots=3)
    gid = make_group(api)
    path = f"{GROUPS}/{gid}/drill"
    r = api.post(path, {"drill": {"create_disks": True}})
    assert r.status_code == 202, r.text
    drill = drill_of(api, gid, "available")
    for m in drill["members"]:
        assert m["volume_status"] == "available", drill
        disk = api.get(f"/v2/{{p}}/volumes/{m['volume_id']}").json()["volume"]
        assert disk["availability_zone"] == "az2.dc2" and disk["snapshot_id"] == m["snapshot_id"]
    assert api.delete(path).status_code == 202
    api.wait(path, lambda r: r.status_code == 404, 90)
    for m in drill["members"]:
        assert api.get(f"/v2/{{p}}/volumes/{m['volume_id']}").status_code == 404
    # With two of the three snapshots in use, a drill of two disks is refused at once.
    vol = api.create_volume()
    for _ in range(2):
        assert api.post("/v2/{p}/snapshots", {"snapshot": {"volume_id": vol["id"]}}).status_code == 202
    assert_fault(api.post(path, None), 413, "overLimit", mentions="quota")
    assert api.get(path).status_code == 404
