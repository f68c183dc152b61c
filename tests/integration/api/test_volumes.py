"""Cinder v2 disks as EVS documents them, probed as a strict client would:
the detail shape and its types, validation with EVS codes, lists with
filters and pagination, update, extend (the pool file grows), delete (the
pool file goes), quotas, types, AZs and version discovery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.api.conftest import (
    EVS_TIME,
    assert_fault,
    attach,
    create_server,
)
from tests.integration.conftest import Api

GIB = 1 << 30
VOLUMES = "/v2/{p}/volumes"
TYPES = ("SATA", "SAS", "SSD", "GPSSD", "ESSD")
AZS = ("az1.dc1", "az2.dc2", "az3.dc3")


def pool_sizes(api: Api, az: str = "az1.dc1") -> dict[str, int]:
    return {v.volume_id: v.size_bytes for v in api.runtime.agent(az).list_volumes()}


def check_detail_shape(api: Api, vol: dict[str, Any]) -> None:
    """Field names and JSON types of Cinder's volume detail, as golangsdk decodes them."""
    types: dict[str, type | tuple[type, ...]] = {
        "id": str, "links": list, "name": str, "status": str, "attachments": list,
        "availability_zone": str, "bootable": str, "encrypted": bool, "created_at": str,
        "updated_at": (str, type(None)), "description": (str, type(None)), "volume_type": str,
        "metadata": dict, "multiattach": bool, "shareable": bool, "size": int, "user_id": str,
        "replication_status": str,
    }
    for key, kind in types.items():
        assert key in vol, f"missing {key}: {vol}"
        assert isinstance(vol[key], kind), f"{key} is {type(vol[key]).__name__}: {vol[key]!r}"
    assert not isinstance(vol["size"], bool)
    assert vol["bootable"] in ("true", "false")
    assert EVS_TIME.match(vol["created_at"]), vol["created_at"]
    if vol["updated_at"] is not None:
        assert EVS_TIME.match(vol["updated_at"]), vol["updated_at"]
    rels = {link["rel"]: link["href"] for link in vol["links"]}
    assert rels["self"] == api.url(f"/v2/{{p}}/volumes/{vol['id']}")
    assert "bookmark" in rels
    assert vol["volume_type"] in TYPES
    assert vol["availability_zone"] in AZS


def test_create_detail_shape_and_status(api: Api) -> None:
    body = {"volume": {"size": 2, "availability_zone": "az2.dc2", "name": "data-1",
                       "description": "for the api test", "volume_type": "SSD",
                       "metadata": {"owner": "openapi"}, "multiattach": False,
                       "imageRef": None}}
    r = api.post(VOLUMES, body)
    assert r.status_code == 202, r.text
    created = r.json()["volume"]
    check_detail_shape(api, created)
    assert created["status"] == "creating"
    assert created["size"] == 2 and created["name"] == "data-1"
    assert created["availability_zone"] == "az2.dc2" and created["volume_type"] == "SSD"
    assert created["metadata"] == {"owner": "openapi"}
    assert created["attachments"] == [] and created["multiattach"] is False
    assert created["encrypted"] is False and created["bootable"] == "false"

    r = api.wait(f"{VOLUMES}/{created['id']}", lambda r: r.json()["volume"]["status"] != "creating")
    assert r.status_code == 200
    vol = r.json()["volume"]
    check_detail_shape(api, vol)
    assert vol["status"] == "available"
    assert vol["id"] == created["id"] and vol["created_at"] == created["created_at"]
    assert vol["description"] == "for the api test"
    assert isinstance(vol["user_id"], str) and vol["user_id"]
    assert pool_sizes(api, "az2.dc2")[vol["id"]] == 2 * GIB

    # Default type, shareable alias, an encrypted disk.
    vol = api.create_volume(size=1, shareable=True, metadata={
        "__system__encrypted": "1", "__system__cmkid": "c" * 36, "hw:passthrough": "true"})
    assert vol["volume_type"] in TYPES
    assert vol["multiattach"] is True and vol["shareable"] is True
    assert vol["encrypted"] is True
    # Name and description of exactly 255 bytes are accepted (multibyte too).
    vol = api.create_volume(size=1, name="n" * 255, description="é" * 127 + "x")
    assert vol["name"] == "n" * 255 and vol["description"] == "é" * 127 + "x"


def test_create_validation(api: Api) -> None:
    def base(**kw: Any) -> dict[str, Any]:
        return {"volume": {"size": 1, "availability_zone": "az1.dc1", **kw}}

    cases: list[tuple[Any, str | None, str]] = [
        (base(availability_zone="az9.nowhere"), "EVS.1036", "availability"),
        (base(availability_zone=""), "EVS.1036", "availability"),
        (base(size=0), "EVS.1010", "size"),
        (base(size=-1), "EVS.1010", "size"),
        (base(size=32769), "EVS.1010", "size"),
        (base(size="abc"), None, "size"),
        (base(size=True), None, "size"),
        (base(size=None), None, "size"),
        (base(size=1.5), None, "size"),
        (base(size=[1]), None, "size"),
        (base(volume_type="NVME"), "EVS.1020", "type"),
        (base(volume_type="ssd"), "EVS.1020", "type"),
        (base(name="n" * 256), "EVS.1003", "name"),
        (base(name="é" * 128), "EVS.1003", "name"),
        (base(name="名" * 86), "EVS.1003", "name"),
        (base(description="d" * 256), "EVS.1004", "description"),
        (base(description="é" * 128), "EVS.1004", "description"),
        (base(name=5), None, "name"),
        (base(metadata={"k": None}), None, "metadata"),
        (base(metadata={"k": 1}), None, "metadata"),
        (base(metadata={"k" * 256: "v"}), None, "metadata"),
        (base(metadata={"": "v"}), None, "metadata"),
        (base(metadata={"k": "v" * 256}), None, "metadata"),
        (base(metadata={"k": "é" * 128}), None, "metadata"),
        (base(metadata=["k", "v"]), None, "metadata"),
        (base(metadata="k=v"), None, "metadata"),
        (base(metadata={"__system__encrypted": "2"}), None, "__system__encrypted"),
        (base(metadata={"__system__encrypted": "1"}), None, "__system__cmkid"),
        (base(metadata={"__system__encrypted": "1", "__system__cmkid": "short"}), None,
         "__system__cmkid"),
        (base(metadata={"hw:passthrough": "yes"}), None, "hw:passthrough"),
        (base(metadata={"full_clone": "2"}), None, "full_clone"),
        (base(multiattach="maybe"), None, "multiattach"),
        (base(snapshot_id="0b3d1c7e-8b3e-4e8b-9a49-4a1a4d0b6f7e", source_volid="x"), "EVS.1016",
         "snapshot_id"),
        ({"volume": {"availability_zone": "az1.dc1"}}, None, "size"),
        ({"volume": {"size": 1}}, None, "availability_zone"),
        ({"volume": {}}, None, "size"),
        ({"volume": None}, None, "volume"),
        ({"volume": "big"}, None, "volume"),
        ({}, None, "volume"),
        ({"size": 1, "availability_zone": "az1.dc1"}, None, "volume"),
    ]
    for body, code, mention in cases:
        r = api.post(VOLUMES, body)
        inner = assert_fault(r, 400, "badRequest", error_code=code)
        assert mention.lower() in inner["message"].lower(), (body, inner)
    assert api.get(VOLUMES).json()["volumes"] == [], "a refused create left a disk behind"


def test_list_filters_sorting_and_pagination(api: Api) -> None:
    made = [api.create_volume(size=s, name=f"v{s}") for s in (3, 1, 2)]
    ids = {v["id"] for v in made}
    extra = api.create_volume(size=1, name="v1", az="az2.dc2")

    r = api.get(VOLUMES)
    assert r.status_code == 200
    brief = r.json()["volumes"]
    assert {v["id"] for v in brief} == ids | {extra["id"]}
    for v in brief:
        assert set(v) == {"id", "name", "links"}
    assert "volumes_links" not in r.json()

    detail = api.get(f"{VOLUMES}/detail").json()["volumes"]
    assert len(detail) == 4
    for v in detail:
        check_detail_shape(api, v)
    # Default order: created_at desc.
    expect = sorted(detail, key=lambda v: (v["created_at"], v["id"]), reverse=True)
    assert [v["id"] for v in detail] == [v["id"] for v in expect]
    assert [v["id"] for v in brief] == [v["id"] for v in expect]

    def names(path: str = VOLUMES + "/detail", **params: Any) -> list[str]:
        r = api.get(path, params=params)
        assert r.status_code == 200, r.text
        return [v["name"] for v in r.json()["volumes"]]

    assert names(name="v2") == ["v2"]
    assert sorted(names(name="v1")) == ["v1", "v1"]
    assert names(name="nope") == []
    assert len(names(status="available")) == 4
    assert names(status="error") == []
    assert names(availability_zone="az2.dc2") == ["v1"]
    assert names(sort_key="size", sort_dir="asc")[-1] == "v3"
    assert names(sort_key="size", sort_dir="desc")[0] == "v3"
    assert names(sort_key="name", sort_dir="asc") == ["v1", "v1", "v2", "v3"]
    assert names(sort_key="name", sort_dir="desc") == ["v3", "v2", "v1", "v1"]
    assert names(sort_key="name", sort_dir="ASC") == ["v1", "v1", "v2", "v3"]
    assert names(sort="name:asc") == ["v1", "v1", "v2", "v3"]
    for key in ("id", "status", "created_at"):
        assert len(names(sort_key=key)) == 4
    assert names(sort_key="name", sort_dir="asc", offset=2) == ["v2", "v3"]
    assert names(sort_key="name", sort_dir="asc", offset=10) == []

    # limit + marker walk every disk exactly once, and volumes_links says where to go on.
    seen: list[str] = []
    marker: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, "sort_key": "name", "sort_dir": "asc"}
        if marker:
            params["marker"] = marker
        r = api.get(VOLUMES, params=params)
        assert r.status_code == 200, r.text
        page = r.json()["volumes"]
        assert len(page) <= 3
        seen += [v["id"] for v in page]
        if len(page) < 3:
            break
        links = r.json()["volumes_links"]
        assert links[0]["rel"] == "next" and f"marker={page[-1]['id']}" in links[0]["href"]
        marker = page[-1]["id"]
    assert sorted(seen) == sorted(ids | {extra["id"]}) and len(seen) == 4

    missing = "00000000-0000-0000-0000-000000000000"
    assert_fault(api.get(VOLUMES, params={"marker": missing}), 404, "itemNotFound")
    assert_fault(api.get(f"{VOLUMES}/detail", params={"marker": missing}), 404, "itemNotFound")
    bad_params: list[tuple[dict[str, Any], str]] = [
        ({"limit": 0}, "EVS.1023"), ({"limit": 1001}, "EVS.1023"), ({"limit": "abc"}, "EVS.1023"),
        ({"limit": -5}, "EVS.1023"), ({"sort_key": "bogus"}, "EVS.1039"),
        ({"sort_key": "size; DROP TABLE volumes"}, "EVS.1039"), ({"sort_dir": "up"}, "EVS.1040"),
        ({"offset": -1}, "EVS.5400"), ({"offset": "x"}, "EVS.5400"),
        ({"changes-since": "yesterday"}, "EVS.5400"),
    ]
    for params, code in bad_params:
        for path in (VOLUMES, f"{VOLUMES}/detail"):
            assert_fault(api.get(path, params=params), 400, "badRequest", error_code=code)
    assert len(names(limit=1000)) == 4
    assert len(names(limit=1)) == 1
    assert len(names(**{"changes-since": "2000-01-01T00:00:00"})) == 4
    assert names(**{"changes-since": "2999-01-01T00:00:00Z"}) == []


def test_update_name_description_metadata(api: Api) -> None:
    vol = api.create_volume(size=1, name="before", description="d0", metadata={"a": "1"})
    path = f"{VOLUMES}/{vol['id']}"
    r = api.put(path, {"volume": {"name": "after", "description": "d1", "metadata": {"b": "2"}}})
    assert r.status_code == 200, r.text
    updated = r.json()["volume"]
    check_detail_shape(api, updated)
    assert (updated["name"], updated["description"], updated["metadata"]) == ("after", "d1", {"b": "2"})
    assert updated["updated_at"] is not None and updated["updated_at"] >= vol["created_at"]
    shown = api.get(path).json()["volume"]
    assert (shown["name"], shown["description"], shown["metadata"]) == ("after", "d1", {"b": "2"})

    # Only what is sent changes; 255 bytes of multibyte text is fine.
    r = api.put(path, {"volume": {"name": "é" * 127}})
    assert r.status_code == 200, r.text
    assert r.json()["volume"]["description"] == "d1" and r.json()["volume"]["name"] == "é" * 127

    for body, code in [
        ({"volume": {"name": "é" * 128}}, "EVS.1003"),
        ({"volume": {"description": "x" * 256}}, "EVS.1004"),
        ({"volume": {"metadata": {"k": None}}}, None),
        ({"volume": {"metadata": {"k": "v" * 256}}}, None),
        ({"volume": {"size": 5}}, None),
        ({"volume": {"name": 1}}, None),
        ({"volume": []}, None),
        ({}, None),
    ]:
        assert_fault(api.put(path, body), 400, "badRequest", error_code=code)
    assert api.get(path).json()["volume"]["name"] == "é" * 127
    missing = "00000000-0000-0000-0000-000000000000"
    assert_fault(api.put(f"{VOLUMES}/{missing}", {"volume": {"name": "x"}}), 404, "itemNotFound")


def test_extend_grows_the_pool_file(api: Api) -> None:
    vol = api.create_volume(size=1)
    action = f"{VOLUMES}/{vol['id']}/action"
    r = api.post(action, {"os-extend": {"new_size": 3}})
    assert r.status_code == 202, r.text
    r = api.wait(f"{VOLUMES}/{vol['id']}", lambda r: r.json()["volume"]["status"] == "available")
    assert r.json()["volume"]["size"] == 3
    assert pool_sizes(api)[vol["id"]] == 3 * GIB

    for new_size, code in ((3, "EVS.1015"), (2, "EVS.1015"), (0, "EVS.1015"), (32769, "EVS.1010")):
        inner = assert_fault(api.post(action, {"os-extend": {"new_size": new_size}}), 400, "badRequest",
                             error_code=code)
        assert "size" in inner["message"]
    for args in ({"new_size": "4"}, {"new_size": True}, {"new_size": 4.5}, {"new_size": None}, {},
                 {"size": 4}, {"new_size": 4, "extra": 1}, None, [4], 4):
        inner = assert_fault(api.post(action, {"os-extend": args}), 400, "badRequest")
        assert "new_size" in inner["message"] or "os-extend" in inner["message"], inner
    assert api.get(f"{VOLUMES}/{vol['id']}").json()["volume"]["size"] == 3
    assert pool_sizes(api)[vol["id"]] == 3 * GIB
    missing = "00000000-0000-0000-0000-000000000000"
    assert_fault(api.post(f"{VOLUMES}/{missing}/action", {"os-extend": {"new_size": 4}}),
                 404, "itemNotFound")


def test_delete_removes_the_pool_file_and_refuses_attached_disks(api: Api) -> None:
    vol = api.create_volume(size=1, az="az3.dc3")
    assert vol["id"] in pool_sizes(api, "az3.dc3")
    r = api.delete(f"{VOLUMES}/{vol['id']}")
    assert r.status_code == 202, r.text
    api.wait(f"{VOLUMES}/{vol['id']}", lambda r: r.status_code == 404)
    assert_fault(api.get(f"{VOLUMES}/{vol['id']}"), 404, "itemNotFound")
    assert vol["id"] not in pool_sizes(api, "az3.dc3")
    assert_fault(api.delete(f"{VOLUMES}/{vol['id']}"), 404, "itemNotFound")
    assert vol["id"] not in [v["id"] for v in api.get(VOLUMES).json()["volumes"]]

    # A disk attached to a server cannot be deleted until it is detached.
    vol = api.create_volume(size=1)
    server = create_server(api)
    assert attach(api, server["id"], vol["id"]).status_code == 200
    inner = assert_fault(api.delete(f"{VOLUMES}/{vol['id']}"), 400, "badRequest", error_code="EVS.1046")
    assert "detach" in inner["message"]
    assert api.get(f"{VOLUMES}/{vol['id']}").json()["volume"]["status"] == "in-use"
    assert vol["id"] in pool_sizes(api)
    r = api.delete(f"/v2.1/{{p}}/servers/{server['id']}/os-volume_attachments/{vol['id']}")
    assert r.status_code == 202, r.text
    assert api.delete(f"{VOLUMES}/{vol['id']}").status_code == 202
    api.wait(f"{VOLUMES}/{vol['id']}", lambda r: r.status_code == 404)


def test_quotas(controller_factory: Callable[..., Api]) -> None:
    api = controller_factory(quota_volumes=2, quota_gigabytes=5)
    first = api.create_volume(size=1)
    inner = assert_fault(api.post(VOLUMES, {"volume": {"size": 5, "availability_zone": "az1.dc1"}}),
                         413, "overLimit")
    assert "gigabytes" in inner["message"]
    second = api.create_volume(size=4)
    inner = assert_fault(api.post(VOLUMES, {"volume": {"size": 1, "availability_zone": "az1.dc1"}}),
                         413, "overLimit")
    assert "quota" in inner["message"]
    assert_fault(api.post(f"{VOLUMES}/{second['id']}/action", {"os-extend": {"new_size": 5}}),
                 413, "overLimit")
    assert len(api.get(VOLUMES).json()["volumes"]) == 2
    # Freeing a disk frees its quota.
    assert api.delete(f"{VOLUMES}/{first['id']}").status_code == 202
    api.wait(f"{VOLUMES}/{first['id']}", lambda r: r.status_code == 404)
    api.create_volume(size=1)


def test_types_azs_and_versions(api: Api) -> None:
    r = api.get("/v2/{p}/types")
    assert r.status_code == 200, r.text
    types = r.json()["volume_types"]
    assert {t["name"] for t in types} == set(TYPES)
    for t in types:
        assert isinstance(t["id"], str) and isinstance(t["extra_specs"], dict)
        shown = api.get(f"/v2/{{p}}/types/{t['id']}")
        assert shown.status_code == 200 and shown.json()["volume_type"]["name"] == t["name"]
    assert_fault(api.get("/v2/{p}/types/NVME"), 404, "itemNotFound")

    r = api.wait("/v2/{p}/os-availability-zone",
                 lambda r: all(z["zoneState"]["available"] for z in r.json()["availabilityZoneInfo"]))
    zones = r.json()["availabilityZoneInfo"]
    assert sorted(z["zoneName"] for z in zones) == list(AZS)
    for z in zones:
        assert z["zoneState"] == {"available": True}

    r = api.client.get(f"{api.base}/")
    assert r.status_code == 300, r.text
    versions = r.json()["versions"]
    assert [v["id"] for v in versions] == ["v2.0"]
    assert any(link["rel"] == "self" and link["href"].endswith("/v2/") for link in versions[0]["links"])
    for path in ("/v2/", "/v2"):
        r = api.client.get(f"{api.base}{path}")
        assert r.status_code == 200, r.text
        assert r.json()["versions"][0]["id"] == "v2.0"
        assert r.json()["versions"][0]["status"] in ("SUPPORTED", "CURRENT")
