"""Replication consistency group API on a live controller with real agents:
every documented field and type of create/show/list, the list parameters,
each documented constraint refused at once with a clear 4xx (never a 5xx),
the per-AZ group limits with their failure_detail codes, a race for one
pair, and the status codes of PUT, the six actions and DELETE."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update

from openevs.db.models import ReplicationPair
from tests.integration.conftest import Api
from tests.support.api import wait_group

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")
PAIRS = "/v2/{p}/os-vendor-replications"
GROUPS = "/v2/{p}/os-vendor-replication-consistency-groups"
GROUP_STATUSES = {
    "creating", "available", "error", "deleting", "error_deleting", "updating", "reversing",
    "error_reversing", "failovering", "failovered", "error_failovering",
}
REPLICATION_STATUSES = {"copying", "active", "active-stopped", "inactive", "error"}
STOP = "os-stop-replication-consistency-group"
SYNC = "os-sync-replication-consistency-group"
FAILOVER = "os-failover-replication-consistency-group"
REVERSE = "os-reverse-replication-consistency-group"
REPROTECT = "os-reprotect-replication-consistency-group"
EXTEND = "os-extend-replication-volumes"


def make_pairs(api: Api, n: int, prod_az: str = "az1.dc1", dr_az: str = "az2.dc2") -> list[str]:
    """n available pairs of 1 GB disks, production in prod_az."""
    ids = []
    for _ in range(n):
        volumes = [api.create_volume(az=prod_az)["id"], api.create_volume(az=dr_az)["id"]]
        body = {"replication": {"volume_ids": volumes, "priority_station": prod_az,
                                "replication_model": "hypermetro"}}
        r = api.post(PAIRS, body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["replication"]["id"])
    for pid in ids:
        api.wait(f"{PAIRS}/{pid}", lambda r: r.json()["replication"]["status"] == "available", 30)
    return ids


def group_body(ids: list[str], station: str = "az1.dc1", **extra: Any) -> dict[str, Any]:
    return {
        "replication_consistency_group": {
            "name": "my replication consistency group",
            "description": "my replication consistency group",
            "replication_ids": ids,
            "priority_station": station,
            "replication_model": "hypermetro",
            **extra,
        }
    }


def fault(r: Any) -> dict[str, Any]:
    assert 400 <= r.status_code < 500, f"{r.status_code} {r.text}"
    body = r.json()
    assert len(body) == 1, body
    inner = dict(next(iter(body.values())))
    assert inner["code"] == r.status_code and inner["message"], inner
    return inner


def show(api: Api, gid: str) -> dict[str, Any]:
    r = api.get(f"{GROUPS}/{gid}")
    assert r.status_code == 200, r.text
    return dict(r.json()["replication_consistency_group"])


def make_group(api: Api, ids: list[str], station: str = "az1.dc1", **extra: Any) -> str:
    r = api.post(GROUPS, group_body(ids, station, **extra))
    assert r.status_code == 202, r.text
    gid = str(r.json()["replication_consistency_group"]["id"])
    wait_group(api, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active")
    return gid


def act(api: Api, gid: str, body: Any) -> Any:
    return api.post(f"{GROUPS}/{gid}/action", body)


def check_group_fields(group: dict[str, Any], full: bool = True) -> None:
    assert isinstance(group["id"], str)
    assert isinstance(group["name"], str)
    assert group["description"] is None or isinstance(group["description"], str)
    assert group["status"] in GROUP_STATUSES
    assert isinstance(group["priority_station"], str)
    assert TIME.match(group["created_at"]), group["created_at"]
    assert group["updated_at"] is None or TIME.match(group["updated_at"]), group["updated_at"]
    if not full:
        return
    assert group["replication_model"] == "hypermetro"
    assert group["replication_status"] is None or group["replication_status"] in REPLICATION_STATUSES
    assert isinstance(group["replication_ids"], list)
    assert all(isinstance(pid, str) for pid in group["replication_ids"])
    assert group["failure_detail"] is None or isinstance(group["failure_detail"], str)
    assert isinstance(group["fault_level"], str) and group["fault_level"] in ("0", "2", "5")


def test_create_show_list_fields(api: Api) -> None:
    ids = make_pairs(api, 2)
    r = api.post(GROUPS, group_body(ids))
    assert r.status_code == 202, r.text
    created = r.json()["replication_consistency_group"]
    check_group_fields(created)
    assert created["status"] == "creating"
    assert created["replication_ids"] == ids  # a JSON list, never a joined string
    assert created["priority_station"] == "az1.dc1"
    assert created["name"] == created["description"] == "my replication consistency group"
    gid = created["id"]

    group = wait_group(api, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active")
    check_group_fields(group)
    assert group["fault_level"] == "0" and group["failure_detail"] is None
    assert sorted(group["replication_ids"]) == sorted(ids)
    assert TIME.match(group["updated_at"])
    for pid in ids:
        pair = api.get(f"{PAIRS}/{pid}").json()["replication"]
        assert pair["replication_consistency_group_id"] == gid

    for path in (GROUPS, GROUPS + "/detail"):
        listed = api.get(path).json()["replication_consistency_groups"]
        assert [g["id"] for g in listed] == [gid]
        check_group_fields(listed[0])


def test_list_filters_and_pages(api: Api) -> None:
    ids = make_pairs(api, 3)
    prod_of_last = api.get(f"{PAIRS}/{ids[2]}").json()["replication"]["volume_ids"].split(",")
    first = make_group(api, [ids[0]], name="first")
    second = make_group(api, [ids[1]], name="second")
    before_third = datetime.now(UTC).replace(tzinfo=None).isoformat()
    time.sleep(0.01)
    third = make_group(api, [ids[2]], name="third")

    def listed(**params: Any) -> list[str]:
        r = api.get(GROUPS, params=params)
        assert r.status_code == 200, r.text
        return [g["id"] for g in r.json()["replication_consistency_groups"]]

    assert listed() == [third, second, first]  # created_at desc by default
    assert listed(sort_dir="asc") == [first, second, third]
    assert listed(sort_key="name", sort_dir="asc") == [first, second, third]
    assert listed(name="second") == [second]
    assert listed(status="available") == [third, second, first]
    assert listed(status="deleting") == []
    assert listed(priority_station="az1.dc1") == [third, second, first]
    assert listed(priority_station="az2.dc2") == []
    for vid in prod_of_last:  # the production and the DR disk both find the group
        assert listed(volume_id=vid) == [third]
    assert listed(volume_id="00000000-0000-0000-0000-000000000000") == []
    assert listed(limit=1) == [third]
    assert listed(limit=1, marker=third) == [second]
    assert listed(marker=second) == [first]
    assert listed(offset=1) == [second, first]
    assert listed(offset=1, limit=1, sort_dir="asc") == [second]
    assert listed(**{"changes-since": before_third}) == [third]

    for params, status in (
        ({"marker": "nope"}, 404),
        ({"limit": 0}, 400),
        ({"limit": 1001}, 400),
        ({"limit": "x"}, 400),
        ({"offset": -1}, 400),
        ({"sort_key": "password"}, 400),
        ({"sort_dir": "sideways"}, 400),
        ({"changes-since": "yesterday"}, 400),
        ({"name": "x" * 2000}, 400),
    ):
        r = api.get(GROUPS, params=params)
        assert r.status_code == status, f"{params}: {r.status_code} {r.text}"
        fault(r)


def test_create_constraints_refused_at_once(api: Api) -> None:
    ids = make_pairs(api, 3)
    other_station = make_pairs(api, 1, prod_az="az2.dc2", dr_az="az3.dc3")[0]

    # The pair is not available: put one in error (a status the reconciler leaves alone).
    with api.runtime.db.session() as session:
        session.execute(update(ReplicationPair).where(ReplicationPair.id == ids[2]).values(status="error"))
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"replication_ids": [ids[2]]}, 400, "must be available"),
        ({"replication_ids": [ids[0], other_station]}, 400, "priority_station"),
        ({"replication_ids": []}, 400, "at least one"),
        ({"replication_ids": [ids[0], ids[0]]}, 400, "twice"),
        ({"replication_ids": ["00000000-0000-0000-0000-000000000000"]}, 400, "does not exist"),
        ({"replication_ids": ids[0]}, 400, "replication_ids"),
        ({"replication_ids": [1]}, 400, "replication_ids"),
        ({"priority_station": "nowhere"}, 400, "not an AZ"),
        ({"replication_model": "async"}, 400, "hypermetro"),
        ({"name": "x" * 256}, 400, "name"),
        ({"description": "é" * 128}, 400, "description"),
        ({"unknown": 1}, 400, "unknown"),
    ]
    for change, status, words in cases:
        body = group_body([ids[0]])
        body["replication_consistency_group"].update(change)
        r = api.post(GROUPS, body)
        assert r.status_code == status, f"{change}: {r.status_code} {r.text}"
        assert words in fault(r)["message"], f"{change}: {r.text}"
    for raw in (b"", b"not json", b"[]", b"{}", b'{"replication_consistency_group": null}'):
        r = api.client.post(api.url(GROUPS), content=raw,
                            headers={**api.headers, "Content-Type": "application/json"})
        assert r.status_code == 400, f"{raw!r}: {r.status_code} {r.text}"
        fault(r)
    assert api.get(GROUPS).json()["replication_consistency_groups"] == []

    gid = make_group(api, [ids[0]])
    r = api.post(GROUPS, group_body([ids[1], ids[0]]))
    assert r.status_code == 409 and gid in fault(r)["message"], r.text
    assert api.get(f"{PAIRS}/{ids[1]}").json()["replication"]["replication_consistency_group_id"] is None


def test_group_limits_per_az(controller_factory: Any) -> None:
    api = controller_factory(group_limit_per_az=1)
    a = make_pairs(api, 2, prod_az="az1.dc1", dr_az="az2.dc2")
    b = make_pairs(api, 1, prod_az="az3.dc3", dr_az="az2.dc2")
    c = make_pairs(api, 1, prod_az="az3.dc3", dr_az="az1.dc1")
    make_group(api, [a[0]])
    r = api.post(GROUPS, group_body([a[1]], "az1.dc1"))
    assert fault(r)["error_code"] == "37100017", r.text
    assert "az1.dc1" in fault(r)["message"]
    r = api.post(GROUPS, group_body([b[0]], "az3.dc3"))  # its DR side is in az2, which is full
    assert fault(r)["error_code"] == "37100159", r.text
    assert "az2.dc2" in fault(r)["message"]
    make_group(api, [c[0]], "az3.dc3")  # az3 primary and az1 as DR side: both have room


def test_group_limit_holds_under_concurrent_creates(controller_factory: Any) -> None:
    api = controller_factory(group_limit_per_az=1)
    ids = make_pairs(api, 4)
    results: list[int] = []
    barrier = threading.Barrier(len(ids))

    def create(pid: str) -> None:
        barrier.wait()
        r = api.post(GROUPS, group_body([pid]))
        results.append(r.status_code)
        if r.status_code != 202:
            assert fault(r)["error_code"] in ("37100017", "37100159"), r.text

    threads = [threading.Thread(target=create, args=(pid,)) for pid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [202, 400, 400, 400], results
    assert len(api.get(GROUPS).json()["replication_consistency_groups"]) == 1


def test_concurrent_creates_claiming_one_pair(api: Api) -> None:
    ids = make_pairs(api, 1)
    results: list[int] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        barrier.wait()
        results.append(api.post(GROUPS, group_body(ids)).status_code)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [202, 409, 409, 409], results
    listed = api.get(GROUPS).json()["replication_consistency_groups"]
    assert len(listed) == 1 and listed[0]["replication_ids"] == ids


def test_update_actions_and_delete_status_codes(api: Api) -> None:
    ids = make_pairs(api, 3)
    gid = make_group(api, ids[:2])
    path = f"{GROUPS}/{gid}"

    # Name and description at any time: 202 updating, then available.
    r = api.put(path, {"replication_consistency_group": {"name": "renamed", "description": "d2"}})
    assert r.status_code == 202, r.text
    updated = r.json()["replication_consistency_group"]
    check_group_fields(updated, full=False)
    assert updated["status"] == "updating" and updated["name"] == "renamed"
    wait_group(api, gid, lambda g: g["status"] == "available")

    # Members change only while paused.
    for change in ({"add_replication_ids": [ids[2]]}, {"remove_replication_ids": [ids[0]]}):
        r = api.put(path, {"replication_consistency_group": change})
        assert r.status_code == 400 and "paused" in fault(r)["message"], r.text
    r = act(api, gid, {REPROTECT: None})
    assert r.status_code == 400 and "available" in fault(r)["message"], r.text

    assert act(api, gid, {STOP: None}).status_code == 200
    wait_group(api, gid, lambda g: g["replication_status"] == "active-stopped")
    r = act(api, gid, {REVERSE: None})
    assert r.status_code == 400 and "sync" in fault(r)["message"], r.text
    for change, words in (
        ({"add_replication_ids": ["00000000-0000-0000-0000-000000000000"]}, "does not exist"),
        ({"remove_replication_ids": [ids[2]]}, "not a member"),
        ({"add_replication_ids": [ids[2]], "remove_replication_ids": [ids[2]]}, "both"),
        ({"add_replication_ids": "x"}, "add_replication_ids"),
    ):
        r = api.put(path, {"replication_consistency_group": change})
        assert r.status_code == 400 and words in fault(r)["message"], f"{change}: {r.text}"
    r = api.put(path, {"replication_consistency_group": {"add_replication_ids": [ids[2]]}})
    assert r.status_code == 202 and r.json()["replication_consistency_group"]["status"] == "updating"
    group = wait_group(api, gid, lambda g: g["status"] == "available")
    assert sorted(group["replication_ids"]) == sorted(ids)

    assert act(api, gid, {SYNC: None}).status_code == 200
    wait_group(api, gid, lambda g: g["replication_status"] == "active")

    # Extend: a smaller size, an unknown pair, a bad body: refused; then 200 when grown.
    for body, words in (
        ({EXTEND: {"replications": [{"id": ids[0], "new_size": 1}]}}, "larger"),
        ({EXTEND: {"id": ids[0], "new_size": 0}}, "larger"),
        ({EXTEND: {"id": "00000000-0000-0000-0000-000000000000", "new_size": 2}}, "not a member"),
        ({EXTEND: {"replications": []}}, EXTEND),
        ({EXTEND: {"id": ids[0], "new_size": "2"}}, EXTEND),
        ({EXTEND: None}, EXTEND),
    ):
        r = act(api, gid, body)
        assert r.status_code == 400 and words in fault(r)["message"], f"{body}: {r.text}"
    r = act(api, gid, {EXTEND: {"replications": [{"id": ids[0], "new_size": 2}]}})
    assert r.status_code == 200, r.text
    pair = api.get(f"{PAIRS}/{ids[0]}").json()["replication"]
    for vid in pair["volume_ids"].split(","):
        assert api.get(f"/v2/{{p}}/volumes/{vid}").json()["volume"]["size"] == 2

    # Switchover while active: 200, reversing, then available on the DR side.
    assert act(api, gid, {REVERSE: None}).status_code == 200
    group = wait_group(api, gid, lambda g: g["status"] == "available" and g["priority_station"] == "az2.dc2")

    # Failover: 200, then failovered; only reprotect leaves it.
    assert act(api, gid, {FAILOVER: None}).status_code == 200
    wait_group(api, gid, lambda g: g["status"] == "failovered")
    for body in ({SYNC: None}, {STOP: None}, {REVERSE: None},
                 {EXTEND: {"id": ids[0], "new_size": 3}}):
        r = act(api, gid, body)
        assert r.status_code == 400 and "failovered" in fault(r)["message"], f"{body}: {r.text}"
    r = api.delete(path)
    assert r.status_code == 400, r.text
    r = api.put(path, {"replication_consistency_group": {"remove_replication_ids": [ids[0]]}})
    assert r.status_code == 400, r.text
    # The name and description change in any status (no agent work: the status stays).
    r = api.put(path, {"replication_consistency_group": {"name": "after-failover"}})
    assert r.status_code == 202, r.text
    assert r.json()["replication_consistency_group"]["status"] == "failovered"
    assert show(api, gid)["name"] == "after-failover"
    assert act(api, gid, {REPROTECT: None}).status_code == 200
    wait_group(api, gid, lambda g: g["status"] == "available" and g["replication_status"] == "active")

    # Delete: refused with members or while updating; 202 then 404 once empty.
    r = api.delete(path)
    assert r.status_code == 400 and "remove them first" in fault(r)["message"], r.text
    assert act(api, gid, {STOP: None}).status_code == 200
    wait_group(api, gid, lambda g: g["replication_status"] in ("active-stopped", "inactive"))
    r = api.put(path, {"replication_consistency_group": {"remove_replication_ids": ids}})
    assert r.status_code == 202, r.text
    r = api.delete(path)
    assert r.status_code in (400, 202), r.text  # 400 while still updating
    if r.status_code == 400:
        fault(r)
        wait_group(api, gid, lambda g: g["status"] == "available" and g["replication_ids"] == [])
        r = api.delete(path)
        assert r.status_code == 202, r.text
    api.wait(path, lambda r: r.status_code == 404)
    assert fault(api.get(path))["code"] == 404
    assert fault(act(api, gid, {SYNC: None}))["code"] == 404
    assert fault(api.delete(path))["code"] == 404
    for pid in ids:
        assert api.get(f"{PAIRS}/{pid}").json()["replication"]["replication_consistency_group_id"] is None


MALFORMED_ACTIONS: list[Any] = [
    {},
    {SYNC: None, STOP: None},
    {"os-fly-replication-consistency-group": None},
    {SYNC: 1},
    {SYNC: "now"},
    {STOP: {"force": True}},
    {FAILOVER: []},
    {REPROTECT: True},
    {REVERSE: {"x": None}},
    [],
    "os-sync-replication-consistency-group",
    None,
    1,
]


def test_malformed_action_bodies(api: Api) -> None:
    ids = make_pairs(api, 1)
    gid = make_group(api, ids)
    for body in MALFORMED_ACTIONS:
        r = api.client.post(api.url(f"{GROUPS}/{gid}/action"), content=json.dumps(body),
                            headers={**api.headers, "Content-Type": "application/json"})
        assert r.status_code == 400, f"{body!r}: {r.status_code} {r.text}"
        fault(r)
    for raw in (b"", b"{", b"\xff"):
        r = api.client.post(api.url(f"{GROUPS}/{gid}/action"), content=raw,
                            headers={**api.headers, "Content-Type": "application/json"})
        assert r.status_code == 400, f"{raw!r}: {r.status_code} {r.text}"
        fault(r)
    group = show(api, gid)
    assert group["status"] == "available" and group["replication_status"] == "active"
