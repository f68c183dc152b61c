"""Replication pair API: the reference's example round-trips with every
documented field and type, and every constraint is refused at once with its
documented failure_detail code."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest

from tests.integration.conftest import Api

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")
PAIRS = "/v2/{p}/os-vendor-replications"


def pair_body(ids: list[str], station: str = "az2.dc2", **extra: Any) -> dict[str, Any]:
    return {
        "replication": {
            "name": "my replication",
            "description": "my replication",
            "volume_ids": ids,
            "priority_station": station,
            "replication_model": "hypermetro",
            **extra,
        }
    }


def two_disks(api: Api, size: int = 1, az_a: str = "az2.dc2", az_b: str = "az3.dc3", **kw: Any) -> list[str]:
    return [
        api.create_volume(size=size, az=az_a, **kw)["id"],
        api.create_volume(size=size, az=az_b, **kw)["id"],
    ]


def check_pair_fields(pair: dict[str, Any]) -> None:
    assert isinstance(pair["id"], str)
    assert isinstance(pair["name"], str)
    assert pair["description"] is None or isinstance(pair["description"], str)
    assert pair["status"] in ("creating", "available", "error", "deleting", "error_deleting")
    assert pair["replication_consistency_group_id"] is None or isinstance(
        pair["replication_consistency_group_id"], str
    )
    assert isinstance(pair["volume_ids"], str)
    assert isinstance(pair["priority_station"], str)
    assert TIME.match(pair["created_at"])
    assert pair["updated_at"] is None or TIME.match(pair["updated_at"])
    assert pair["replication_model"] == "hypermetro"
    assert pair["replication_status"] is None or pair["replication_status"] in (
        "copying",
        "active",
        "active-stopped",
        "inactive",
        "error",
    )
    assert pair["progress"] is None or (isinstance(pair["progress"], str) and pair["progress"].isdigit())
    assert pair["failure_detail"] is None or isinstance(pair["failure_detail"], str)
    assert isinstance(pair["fault_level"], str) and pair["fault_level"] in ("0", "2", "5")
    meta = json.loads(pair["record_metadata"])
    assert set(meta) == {"volume_size", "volume_type", "multiattach"}
    assert isinstance(meta["volume_size"], int) and isinstance(meta["multiattach"], bool)


def test_reference_example_round_trips(api: Api) -> None:
    ids = two_disks(api, size=2, volume_type="SSD")
    r = api.post(PAIRS, pair_body(ids))
    assert r.status_code == 202, r.text
    created = r.json()["replication"]
    check_pair_fields(created)
    assert created["status"] == "creating"
    assert created["volume_ids"] == f"{ids[0]},{ids[1]}"  # one string, request order
    assert created["priority_station"] == "az2.dc2"
    assert created["name"] == "my replication" and created["description"] == "my replication"
    assert json.loads(created["record_metadata"]) == {
        "volume_size": 2,
        "volume_type": "SSD",
        "multiattach": False,
    }

    shown = api.get(f"{PAIRS}/{created['id']}").json()["replication"]
    check_pair_fields(shown)
    listed = api.get(PAIRS).json()["replications"]
    assert [p["id"] for p in listed] == [created["id"]]
    check_pair_fields(listed[0])
    for key, value in (
        ("volume_id", ids[1]),
        ("volume_ids", ids[0]),
        ("priority_station", "az2.dc2"),
        ("name", "my replication"),
    ):
        assert [p["id"] for p in api.get(PAIRS, params={key: value}).json()["replications"]] == [
            created["id"]
        ]
    assert api.get(PAIRS, params={"priority_station": "az1.dc1"}).json()["replications"] == []
    assert api.get(PAIRS, params={"marker": "nope"}).status_code == 404


def test_order_of_volume_ids_is_kept(api: Api) -> None:
    dr, prod = api.create_volume(az="az3.dc3")["id"], api.create_volume(az="az2.dc2")["id"]
    r = api.post(PAIRS, pair_body([dr, prod]))
    assert r.status_code == 202, r.text
    assert r.json()["replication"]["volume_ids"] == f"{dr},{prod}"


def fault(r: Any) -> dict[str, Any]:
    body = r.json()
    assert len(body) == 1
    return dict(next(iter(body.values())))


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda ids: {"volume_ids": [ids[0]]}, 400, None),
        (lambda ids: {"volume_ids": [ids[0], ids[0]]}, 400, None),
        (lambda ids: {"volume_ids": [ids[0], "00000000-0000-0000-0000-000000000000"]}, 400, "37100050"),
        (lambda ids: {"volume_ids": ["00000000-0000-0000-0000-000000000000", ids[1]]}, 400, "37100048"),
        (lambda ids: {"priority_station": "az1.dc1"}, 400, None),
        (lambda ids: {"priority_station": "nowhere"}, 400, None),
        (lambda ids: {"replication_model": "async"}, 400, None),
        (lambda ids: {"name": "x" * 256}, 400, None),
        (lambda ids: {"description": "é" * 128}, 400, None),
        (lambda ids: {"volume_ids": "a,b"}, 400, None),
        (lambda ids: {"unknown": 1}, 400, None),
    ],
)
def test_constraints_refused_at_once(api: Api, mutate: Any, status: int, code: str | None) -> None:
    ids = two_disks(api)
    body = pair_body(ids)
    body["replication"].update(mutate(ids))
    r = api.post(PAIRS, body)
    assert r.status_code == status, r.text
    if code:
        assert fault(r)["error_code"] == code
    assert fault(r)["message"]


def test_same_az_capacity_type(api: Api) -> None:
    a = api.create_volume(az="az2.dc2")["id"]
    b = api.create_volume(az="az2.dc2")["id"]
    r = api.post(PAIRS, pair_body([a, b]))
    assert r.status_code == 400 and "different AZs" in fault(r)["message"]
    c = api.create_volume(size=2, az="az3.dc3")["id"]
    r = api.post(PAIRS, pair_body([a, c]))
    assert r.status_code == 400 and fault(r)["error_code"] == "37100041"
    d = api.create_volume(az="az3.dc3", volume_type="SSD")["id"]
    r = api.post(PAIRS, pair_body([a, d]))
    assert r.status_code == 400 and fault(r)["error_code"] == "37100041"


def test_disk_in_another_pair(api: Api) -> None:
    ids = two_disks(api)
    assert api.post(PAIRS, pair_body(ids)).status_code == 202
    other_dr = api.create_volume(az="az3.dc3")["id"]
    r = api.post(PAIRS, pair_body([ids[0], other_dr]))
    assert r.status_code == 409 and fault(r)["error_code"] == "37100053"
    other_prod = api.create_volume(az="az2.dc2")["id"]
    r = api.post(PAIRS, pair_body([other_prod, ids[1]]))
    assert r.status_code == 409 and fault(r)["error_code"] == "37100054"


def test_dr_disk_on_running_server(api: Api) -> None:
    ids = two_disks(api)
    server = api.post("/v2.1/{p}/servers", {"server": {"name": "dr-host", "availability_zone": "az3.dc3"}})
    sid = server.json()["server"]["id"]
    att = api.post(
        f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments", {"volumeAttachment": {"volumeId": ids[1]}}
    )
    assert att.status_code == 200, att.text
    r = api.post(PAIRS, pair_body(ids))
    assert r.status_code == 400 and fault(r)["error_code"] == "37100058"
    assert api.post(f"/v2.1/{{p}}/servers/{sid}/action", {"os-stop": None}).status_code == 202
    assert api.post(PAIRS, pair_body(ids)).status_code == 202


def test_concurrent_creates_exactly_one_wins(api: Api) -> None:
    ids = two_disks(api)
    results: list[int] = []

    def create() -> None:
        results.append(api.post(PAIRS, pair_body(ids)).status_code)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count(202) == 1, results
    assert all(code in (202, 409) for code in results), results
    assert len(api.get(PAIRS).json()["replications"]) == 1


def test_paired_disk_cannot_be_deleted_or_extended(api: Api) -> None:
    ids = two_disks(api)
    pair = api.post(PAIRS, pair_body(ids)).json()["replication"]
    r = api.delete(f"{PAIRS}/{pair['id']}")
    assert r.status_code in (202, 400)  # 400 only while still creating
    if r.status_code == 400:
        assert "creating" in fault(r)["message"]
        api.wait(f"{PAIRS}/{pair['id']}", lambda r: r.json()["replication"]["status"] == "available")
    else:
        api.wait(f"{PAIRS}/{pair['id']}", lambda r: r.status_code == 404, timeout_s=30)
        pair = api.post(PAIRS, pair_body(ids)).json()["replication"]
        api.wait(f"{PAIRS}/{pair['id']}", lambda r: r.json()["replication"]["status"] == "available")
    for vid in ids:
        r = api.delete(f"/v2/{{p}}/volumes/{vid}")
        assert r.status_code == 400 and "replication pair" in fault(r)["message"]
        r = api.post(f"/v2/{{p}}/volumes/{vid}/action", {"os-extend": {"new_size": 5}})
        assert r.status_code == 400 and "replication pair" in fault(r)["message"]
    assert api.delete(f"{PAIRS}/{pair['id']}").status_code == 202
    api.wait(f"{PAIRS}/{pair['id']}", lambda r: r.status_code == 404, timeout_s=30)
    assert api.delete(f"/v2/{{p}}/volumes/{ids[0]}").status_code == 202


def test_other_project_sees_nothing(api: Api) -> None:
    from openevs.services import identity

    ids = two_disks(api)
    pair = api.post(PAIRS, pair_body(ids)).json()["replication"]
    with api.runtime.db.session() as session:
        identity.create_project(session, "other")
        identity.create_user(session, "bob", "bob-password", "other")
    bob = api.login("bob", "bob-password", "other")
    assert bob.get(f"{PAIRS}/{pair['id']}").status_code == 404
    assert bob.delete(f"{PAIRS}/{pair['id']}").status_code == 404
    assert bob.get(PAIRS).json()["replications"] == []
    assert bob.post(PAIRS, pair_body(ids)).status_code == 400  # bob's project has no such disks
    assert bob.client.get(api.url(PAIRS), headers=bob.headers).status_code == 400  # URL names A's project
