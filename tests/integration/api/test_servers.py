"""Nova v2.1 subset: servers (create, list, show, os-stop/os-start, delete)
and os-volume_attachments, with the AZ and multiattach rules.
"""

from __future__ import annotations

from typing import Any

from tests.integration.api.conftest import (
    NOVA_TIME,
    assert_fault,
    attach,
    create_server,
)
from tests.integration.conftest import Api

SERVERS = "/v2.1/{p}/servers"
MISSING = "00000000-0000-0000-0000-000000000000"


def volume(api: Api, vid: str) -> dict[str, Any]:
    r = api.get(f"/v2/{{p}}/volumes/{vid}")
    assert r.status_code == 200, r.text
    return dict(r.json()["volume"])


def check_server_shape(api: Api, server: dict[str, Any]) -> None:
    for key, kind in {"id": str, "name": str, "status": str, "tenant_id": str, "user_id": str,
                      "created": str, "updated": str, "OS-EXT-AZ:availability_zone": str,
                      "os-extended-volumes:volumes_attached": list, "links": list,
                      "flavor": dict, "addresses": dict, "metadata": dict}.items():
        assert isinstance(server.get(key), kind), f"{key}: {server.get(key)!r}"
    assert server["tenant_id"] == api.project_id
    assert NOVA_TIME.match(server["created"]) and NOVA_TIME.match(server["updated"])
    assert server["status"] in ("ACTIVE", "SHUTOFF")
    rels = {link["rel"]: link["href"] for link in server["links"]}
    assert rels["self"] == api.url(f"{SERVERS}/{server['id']}")


def test_server_lifecycle(api: Api) -> None:
    r = api.post(SERVERS, {"server": {"name": "vm-1", "availability_zone": "az2.dc2",
                                      "imageRef": "any-image", "flavorRef": "m1.tiny"}})
    assert r.status_code == 202, r.text
    sid = r.json()["server"]["id"]
    assert {link["rel"] for link in r.json()["server"]["links"]} >= {"self", "bookmark"}
    other = create_server(api, "vm-2")  # no imageRef needed; default AZ
    assert other["OS-EXT-AZ:availability_zone"] == "az1.dc1"

    r = api.get(f"{SERVERS}/{sid}")
    assert r.status_code == 200, r.text
    server = r.json()["server"]
    check_server_shape(api, server)
    assert server["name"] == "vm-1" and server["status"] == "ACTIVE"
    assert server["OS-EXT-AZ:availability_zone"] == "az2.dc2"

    brief = api.get(SERVERS).json()["servers"]
    assert {s["id"] for s in brief} == {sid, other["id"]}
    for s in brief:
        assert set(s) == {"id", "name", "links"}
    detail = api.get(f"{SERVERS}/detail").json()["servers"]
    assert {s["id"] for s in detail} == {sid, other["id"]}
    for s in detail:
        check_server_shape(api, s)
    assert [s["id"] for s in api.get(SERVERS, params={"name": "vm-1"}).json()["servers"]] == [sid]

    action = f"{SERVERS}/{sid}/action"
    assert api.post(action, {"os-stop": None}).status_code == 202
    assert api.get(f"{SERVERS}/{sid}").json()["server"]["status"] == "SHUTOFF"
    assert [s["id"] for s in api.get(f"{SERVERS}/detail", params={"status": "SHUTOFF"}).json()["servers"]] \
        == [sid]
    r = api.post(action, {"os-stop": None})
    assert r.status_code in (400, 409), r.text
    assert_fault(r, r.status_code, mentions="stop")
    assert api.post(action, {"os-start": {}}).status_code == 202
    assert api.get(f"{SERVERS}/{sid}").json()["server"]["status"] == "ACTIVE"
    r = api.post(action, {"os-start": None})
    assert r.status_code in (400, 409), r.text
    assert_fault(r, r.status_code)

    for body in ({"reboot": {"type": "SOFT"}}, {"os-start": None, "os-stop": None}, {},
                 {"os-stop": {"force": True}}, [], {"os-stop": 1}):
        assert_fault(api.post(action, body), 400, "badRequest")
    assert_fault(api.post(f"{SERVERS}/{MISSING}/action", {"os-stop": None}), 404, "itemNotFound")

    r = api.delete(f"{SERVERS}/{sid}")
    assert r.status_code == 204, r.text
    assert_fault(api.get(f"{SERVERS}/{sid}"), 404, "itemNotFound")
    assert_fault(api.delete(f"{SERVERS}/{sid}"), 404, "itemNotFound")
    assert [s["id"] for s in api.get(SERVERS).json()["servers"]] == [other["id"]]
    api.delete(f"{SERVERS}/{other['id']}")
    check_server_create_validation(api)


def check_server_create_validation(api: Api) -> None:
    def body(**kw: Any) -> dict[str, Any]:
        return {"server": {"name": "vm", "availability_zone": "az1.dc1", **kw}}

    for bad in (body(availability_zone="az9.nowhere"), body(name=""), body(name="   "),
                body(name="n" * 256), body(name="é" * 128), body(name=None), body(name=7),
                {"server": {"availability_zone": "az1.dc1"}}, {"server": None}, {"server": []},
                {}, []):
        assert_fault(api.post(SERVERS, bad), 400, "badRequest")
    assert api.get(SERVERS).json()["servers"] == []
    bad_params: list[dict[str, Any]] = [{"limit": 0}, {"limit": "x"}, {"sort_key": "bogus"},
                                        {"sort_dir": "sideways"}, {"changes-since": "not-a-time"}]
    for params in bad_params:
        assert_fault(api.get(SERVERS, params=params), 400, "badRequest")
    assert_fault(api.get(SERVERS, params={"marker": MISSING}), 404, "itemNotFound")


def test_attach_list_show_detach(api: Api) -> None:
    server = create_server(api, "vm")
    sid = server["id"]
    vol = api.create_volume(size=1, name="data")
    vid = vol["id"]
    atts = f"{SERVERS}/{sid}/os-volume_attachments"

    r = attach(api, sid, vid)
    assert r.status_code == 200, r.text
    att = r.json()["volumeAttachment"]
    assert att["volumeId"] == vid and att["serverId"] == sid
    assert att["device"].startswith("/dev/vd") and isinstance(att["id"], str)

    v = volume(api, vid)
    assert v["status"] == "in-use"
    assert len(v["attachments"]) == 1
    listed = v["attachments"][0]
    assert listed["server_id"] == sid and listed["device"] == att["device"]
    assert listed["volume_id"] == vid

    r = api.get(atts)
    assert r.status_code == 200
    assert r.json()["volumeAttachments"] == [att]
    r = api.get(f"{atts}/{vid}")
    assert r.status_code == 200 and r.json()["volumeAttachment"] == att
    shown = api.get(f"{SERVERS}/{sid}").json()["server"]
    assert [a["id"] for a in shown["os-extended-volumes:volumes_attached"]] == [vid]
    assert_fault(api.get(f"{atts}/{MISSING}"), 404, "itemNotFound")

    # A second disk gets the next device; an explicit device is honoured.
    vol2 = api.create_volume(size=1)
    r = api.post(atts, {"volumeAttachment": {"volumeId": vol2["id"], "device": "/dev/vdq"}})
    assert r.status_code == 200, r.text
    assert r.json()["volumeAttachment"]["device"] == "/dev/vdq"
    vol3 = api.create_volume(size=1)
    for spec in ({"volumeId": vol3["id"], "device": "/dev/vdq"}, {"volumeId": vol3["id"], "device": "sdb"},
                 {"volumeId": MISSING}, {"device": "/dev/vdc"}, {"volumeId": 5}):
        r = api.post(atts, {"volumeAttachment": spec})
        assert 400 <= r.status_code < 500, r.text
        assert_fault(r, r.status_code)
    for body in ({}, {"volumeAttachment": None}, []):
        assert_fault(api.post(atts, body), 400, "badRequest")
    assert volume(api, vol3["id"])["status"] == "available"
    # Attaching the same disk twice to one server is a claim already made.
    assert_fault(attach(api, sid, vid), 409, "conflictingRequest")

    # Detach -> available, attachment gone.
    r = api.delete(f"{atts}/{vid}")
    assert r.status_code == 202, r.text
    v = volume(api, vid)
    assert v["status"] == "available" and v["attachments"] == []
    assert_fault(api.get(f"{atts}/{vid}"), 404, "itemNotFound")
    assert_fault(api.delete(f"{atts}/{vid}"), 404, "itemNotFound")
    assert [a["volumeId"] for a in api.get(atts).json()["volumeAttachments"]] == [vol2["id"]]
    assert_fault(api.get(f"{SERVERS}/{MISSING}/os-volume_attachments"), 404, "itemNotFound")
    assert_fault(attach(api, MISSING, vid), 404, "itemNotFound")


def test_attach_rules(api: Api) -> None:
    s1 = create_server(api, "s1")
    s2 = create_server(api, "s2")
    far = create_server(api, "far", az="az2.dc2")
    single = api.create_volume(size=1, name="single")
    shared = api.create_volume(size=1, name="shared", multiattach=True)

    # Same AZ only.
    inner = assert_fault(attach(api, far["id"], single["id"]), 400, "badRequest")
    assert "az" in inner["message"].lower()
    assert volume(api, single["id"])["status"] == "available"

    # A non-multiattach disk attaches once.
    assert attach(api, s1["id"], single["id"]).status_code == 200
    assert_fault(attach(api, s2["id"], single["id"]), 409, "conflictingRequest")
    assert [a["server_id"] for a in volume(api, single["id"])["attachments"]] == [s1["id"]]

    # A multiattach disk attaches to two servers; it stays in-use until the last detach.
    assert attach(api, s1["id"], shared["id"]).status_code == 200
    assert attach(api, s2["id"], shared["id"]).status_code == 200
    v = volume(api, shared["id"])
    assert v["status"] == "in-use"
    assert sorted(a["server_id"] for a in v["attachments"]) == sorted([s1["id"], s2["id"]])
    assert api.delete(f"{SERVERS}/{s2['id']}/os-volume_attachments/{shared['id']}").status_code == 202
    v = volume(api, shared["id"])
    assert v["status"] == "in-use" and [a["server_id"] for a in v["attachments"]] == [s1["id"]]

    # Deleting a server releases its disks.
    assert api.delete(f"{SERVERS}/{s1['id']}").status_code == 204
    for vid in (single["id"], shared["id"]):
        v = volume(api, vid)
        assert v["status"] == "available" and v["attachments"] == []
    # A stopped server can take a disk too, and a disk being deleted cannot be attached.
    assert api.post(f"{SERVERS}/{s2['id']}/action", {"os-stop": None}).status_code == 202
    assert attach(api, s2["id"], single["id"]).status_code == 200
    assert api.delete(f"/v2/{{p}}/volumes/{shared['id']}").status_code == 202
    r = attach(api, s2["id"], shared["id"])
    assert r.status_code in (400, 404, 409), r.text
    assert_fault(r, r.status_code)
