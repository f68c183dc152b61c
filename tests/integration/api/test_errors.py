"""Malformed requests: every one is a 4xx with an OpenStack fault body whose
message says what to fix; none is a 5xx.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

from tests.integration.api.conftest import assert_client_error, assert_fault, create_server
from tests.integration.conftest import Api

MISSING = "00000000-0000-0000-0000-000000000000"


def raw_post(api: Api, path: str, content: bytes, content_type: str = "application/json",
             **headers: str) -> Any:
    return api.client.post(api.url(path), content=content,
                           headers={**api.headers, "Content-Type": content_type, **headers})


def body_routes(api: Api) -> list[tuple[str, str]]:
    """(method, path) of every route that takes a JSON body, on live resources."""
    vol = api.create_volume(size=1)
    server = create_server(api)
    return [
        ("POST", "/v2/{p}/volumes"),
        ("PUT", f"/v2/{{p}}/volumes/{vol['id']}"),
        ("POST", f"/v2/{{p}}/volumes/{vol['id']}/action"),
        ("POST", "/v2.1/{p}/servers"),
        ("POST", f"/v2.1/{{p}}/servers/{server['id']}/action"),
        ("POST", f"/v2.1/{{p}}/servers/{server['id']}/os-volume_attachments"),
        ("POST", "/v3/auth/tokens"),
    ]


def send(api: Api, method: str, path: str, content: bytes, content_type: str = "application/json") -> Any:
    return api.client.request(method, api.url(path), content=content,
                              headers={**api.headers, "Content-Type": content_type})


def test_malformed_bodies_on_every_body_route(api: Api) -> None:
    routes = body_routes(api)
    bodies: list[tuple[bytes, str | None]] = [
        (b"{", "JSON"),
        (b'{"volume": {"size": 1,}}', "JSON"),
        (b"not json at all", "JSON"),
        (b"", None),
        (b"\xff\xfe\x00garbage", None),
        (b"[]", None),
        (b"[{}]", None),
        (b"null", None),
        (b"42", None),
        (b'"a string"', None),
        (b"true", None),
        (b'{"a": NaN}', None),
        (b"[" * 50_000 + b"]" * 50_000, None),
        (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, None),
    ]
    for method, path in routes:
        for content, mention in bodies:
            r = send(api, method, path, content)
            inner = assert_fault(r, 400, "badRequest")
            if mention:
                assert mention in inner["message"], (path, content[:40], inner)
        # A body that is not JSON at all, by its media type.
        r = send(api, method, path, b"size=1", "application/x-www-form-urlencoded")
        assert_client_error(r)
        r = send(api, method, path, b'{"volume": {"size": 1}}', "text/plain")
        assert_client_error(r)


def test_action_bodies_need_exactly_one_known_key(api: Api) -> None:
    vol = api.create_volume(size=1)
    server = create_server(api)
    vaction = f"/v2/{{p}}/volumes/{vol['id']}/action"
    saction = f"/v2.1/{{p}}/servers/{server['id']}/action"
    for path, good in ((vaction, {"os-extend": {"new_size": 2}}), (saction, {"os-stop": None})):
        inner = assert_fault(api.post(path, {}), 400, "badRequest")
        assert "one key" in inner["message"]
        two = {**good, "os-start": None} if path == vaction else {**good, "os-start": None}
        inner = assert_fault(api.post(path, two), 400, "badRequest")
        assert "one key" in inner["message"]
        inner = assert_fault(api.post(path, {"os-frobnicate": {}}), 400, "badRequest")
        assert "os-frobnicate" in inner["message"] and "supported" in inner["message"]
        assert_fault(api.post(path, {"x" * 10_000: None}), 400, "badRequest")
    # Unknown keys inside an action's arguments.
    inner = assert_fault(api.post(vaction, {"os-extend": {"new_size": 2, "new_sise": 3}}), 400,
                         "badRequest")
    assert "new_sise" in inner["message"]
    for args in ({"connector": {}, "extra": 1}, {}, {"connector": "host"}):
        assert_fault(api.post(vaction, {"os-initialize_connection": args}), 400, "badRequest")
    assert_fault(api.post(saction, {"os-stop": {"unexpected": 1}}), 400, "badRequest")
    # Nothing changed.
    assert api.get(f"/v2/{{p}}/volumes/{vol['id']}").json()["volume"]["size"] == 1
    assert api.get(f"/v2.1/{{p}}/servers/{server['id']}").json()["server"]["status"] == "ACTIVE"


def test_wrong_types_and_missing_fields_name_the_field(api: Api) -> None:
    cases: list[tuple[str, Any, str]] = [
        ("/v2/{p}/volumes", {"volume": {"size": "big", "availability_zone": "az1.dc1"}}, "size"),
        ("/v2/{p}/volumes", {"volume": {"size": {}, "availability_zone": "az1.dc1"}}, "size"),
        ("/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": 3}}, "availability_zone"),
        ("/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": ["az1.dc1"]}},
         "availability_zone"),
        ("/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": "az1.dc1",
                                        "volume_type": 1}}, "volume_type"),
        ("/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": "az1.dc1",
                                        "multiattach": []}}, "multiattach"),
        ("/v2/{p}/volumes", {"volume": {"size": 1}}, "availability_zone"),
        ("/v2/{p}/volumes", {"volumes": {"size": 1, "availability_zone": "az1.dc1"}}, "volume"),
        ("/v2.1/{p}/servers", {"server": {"name": ["x"]}}, "name"),
        ("/v2.1/{p}/servers", {"server": {}}, "name"),
        ("/v2.1/{p}/servers", {"servers": {"name": "x"}}, "server"),
    ]
    for path, body, field in cases:
        inner = assert_fault(api.post(path, body), 400, "badRequest")
        assert field in inner["message"], (body, inner)


def test_oversized_and_odd_strings(api: Api) -> None:
    vol = api.create_volume(size=1)
    huge = "x" * 100_000
    for body in ({"volume": {"size": 1, "availability_zone": "az1.dc1", "name": huge}},
                 {"volume": {"size": 1, "availability_zone": huge}},
                 {"volume": {"size": 1, "availability_zone": "az1.dc1", "volume_type": huge}},
                 {"volume": {"size": 1, "availability_zone": "az1.dc1", "metadata": {huge: "v"}}},
                 {"volume": {"size": 10**400, "availability_zone": "az1.dc1"}},
                 {"volume": {"size": -(10**40), "availability_zone": "az1.dc1"}}):
        assert_fault(api.post("/v2/{p}/volumes", body), 400, "badRequest")
    assert_fault(api.put(f"/v2/{{p}}/volumes/{vol['id']}", {"volume": {"description": huge}}), 400,
                 "badRequest")
    assert_fault(api.post(f"/v2/{{p}}/volumes/{vol['id']}/action", {"os-extend": {"new_size": 10**400}}),
                 400, "badRequest")
    assert_fault(api.post("/v2.1/{p}/servers", {"server": {"name": huge}}), 400, "badRequest")
    # NUL characters and lone surrogates cannot be stored: 400 wherever they appear.
    server = create_server(api)
    for text in ("a\x00b", "\ud800", "x\udfffy"):
        seg = quote(text, safe="", errors="surrogatepass")
        for method, path, body in (
            ("POST", "/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": "az1.dc1",
                                                    "name": text}}),
            ("POST", "/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": text}}),
            ("POST", "/v2/{p}/volumes", {"volume": {"size": 1, "availability_zone": "az1.dc1",
                                                    "metadata": {text: "v"}}}),
            ("PUT", f"/v2/{{p}}/volumes/{vol['id']}", {"volume": {"metadata": {"k": text}}}),
            ("PUT", f"/v2/{{p}}/volumes/{vol['id']}", {"volume": {"description": text}}),
            ("POST", "/v2.1/{p}/servers", {"server": {"name": text}}),
            ("POST", "/v2.1/{p}/servers", {"server": {"name": "vm", "imageRef": text}}),
            ("POST", f"/v2.1/{{p}}/servers/{server['id']}/os-volume_attachments",
             {"volumeAttachment": {"volumeId": text}}),
            ("POST", "/v3/auth/tokens", {"auth": {"identity": {"methods": ["password"], "password": {
                "user": {"name": text, "domain": {"name": "Default"}, "password": text}}}}}),
        ):
            # json.dumps escapes as \u0000 / \ud800, as any JSON encoder may.
            r = send(api, method, path, json.dumps(body).encode())
            inner = assert_fault(r, 400, "badRequest")
            assert "NUL" in inner["message"], inner
        for path in ("/v2/{p}/volumes", "/v2/{p}/volumes/detail", "/v2.1/{p}/servers"):
            for key in ("name", "status", "marker", "availability_zone"):
                r = api.client.get(f"{api.url(path)}?{key}={seg}", headers=api.headers)
                if "\x00" in text:
                    assert_fault(r, 400, "badRequest")
                else:  # %ED%A0%80 is no UTF-8: it decodes to U+FFFD
                    assert r.status_code in (200, 400, 404), r.text
        for method, path in (("GET", f"/v2/{{p}}/volumes/{seg}"), ("DELETE", f"/v2/{{p}}/volumes/{seg}"),
                             ("GET", f"/v2.1/{{p}}/servers/{seg}"), ("DELETE", f"/v2.1/{{p}}/servers/{seg}"),
                             ("GET", f"/v2.1/{{p}}/servers/{seg}/os-volume_attachments")):
            r = api.client.request(method, api.url(path), headers=api.headers)
            assert r.status_code in (400, 404), r.text
            assert_client_error(r)
    assert api.get(f"/v2/{{p}}/volumes/{vol['id']}").json()["volume"]["metadata"] == {}
    # Other odd but storable text is kept as sent.
    for text in ("tab\there", "\u202eevil", "名前", "emoji \U0001f600", "' OR 1=1 --"):
        r = api.put(f"/v2/{{p}}/volumes/{vol['id']}", {"volume": {"name": text, "metadata": {text: text}}})
        assert r.status_code == 200, r.text
        assert r.json()["volume"]["name"] == text and r.json()["volume"]["metadata"] == {text: text}
        assert [v["id"] for v in api.get("/v2/{p}/volumes", params={"name": text}).json()["volumes"]] \
            == [vol["id"]]
    # Long path segments and query values.
    assert_fault(api.get(f"/v2/{{p}}/volumes/{'v' * 5000}"), 404, "itemNotFound")
    assert_fault(api.delete(f"/v2/{{p}}/volumes/{'v' * 5000}"), 404, "itemNotFound")
    assert_client_error(api.get(f"/v2/{'p' * 5000}/volumes"))
    assert_fault(api.get("/v2/{p}/volumes", params={"name": "n" * 5000}), 400, "badRequest")
    assert_fault(api.get("/v2/{p}/volumes", params={"limit": "9" * 200}), 400, "badRequest")
    assert_fault(api.get("/v2/{p}/volumes", params={"offset": "9" * 200}), 400, "badRequest")


def test_big_bodies_are_413(api: Api) -> None:
    big = json.dumps({"volume": {"size": 1, "availability_zone": "az1.dc1",
                                 "description": "x" * (2 << 20)}}).encode()
    for path in ("/v2/{p}/volumes", "/v2.1/{p}/servers", "/v3/auth/tokens"):
        inner = assert_fault(raw_post(api, path, big), 413, "overLimit")
        assert "bytes" in inner["message"]

    def chunks() -> Iterator[bytes]:
        for _ in range(32):
            yield b"x" * 65536

    # Without a Content-Length (chunked), the limit holds too.
    r = api.client.post(api.url("/v2/{p}/volumes"), content=chunks(),
                        headers={**api.headers, "Content-Type": "application/json"})
    assert_fault(r, 413, "overLimit")
    assert api.get("/v2/{p}/volumes").json()["volumes"] == []
    check_raw_protocol_oddities(api)


def raw_request(api: Api, request: bytes) -> tuple[int, bytes]:
    """Send bytes the HTTP client would refuse to send; return (status, body)."""
    parts = urlsplit(api.base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = [line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= int(length[0]):
                    break
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def check_raw_protocol_oddities(api: Api) -> None:
    path = api.url("/v2/{p}/volumes").removeprefix(api.base)
    auth = f"X-Auth-Token: {api.token}\r\n".encode()
    status, body = raw_request(
        api, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Content-Type: application/json\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{\"a\"")
    assert 400 <= status < 500
    status, body = raw_request(
        api, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth
        + b"X-Big: " + b"h" * 20_000 + b"\r\nConnection: close\r\n\r\n")
    assert 400 <= status < 500, body[:300]


def test_unknown_routes_and_wrong_methods(api: Api) -> None:
    vol = api.create_volume(size=1)
    for path in ("/nope", "/v2/{p}/nope", "/v2/{p}/volumes/a/b/c", "/v2.1/{p}/flavors",
                 "/v3/users", "/v2/{p}/backups", "/v1/{p}/volumes", "/v3/{p}/volumes"):
        inner = assert_fault(api.get(path), 404, "itemNotFound")
        assert "no such" in inner["message"] or "not" in inner["message"]
    assert_fault(api.get(f"/v2/{{p}}/volumes/{MISSING}"), 404, "itemNotFound")
    assert_fault(api.get(f"/v2.1/{{p}}/servers/{MISSING}"), 404, "itemNotFound")
    wrong = [
        ("PATCH", "/v2/{p}/volumes"), ("DELETE", "/v2/{p}/volumes"), ("PUT", "/v2/{p}/volumes"),
        ("POST", f"/v2/{{p}}/volumes/{vol['id']}"), ("PATCH", f"/v2/{{p}}/volumes/{vol['id']}"),
        ("GET", f"/v2/{{p}}/volumes/{vol['id']}/action"), ("DELETE", "/v2/{p}/types"),
        ("POST", "/v2/{p}/os-availability-zone"), ("PUT", "/v2.1/{p}/servers"),
        ("PATCH", "/v3/auth/tokens"), ("POST", "/v3"), ("DELETE", "/"), ("POST", "/v2/"),
    ]
    for method, path in wrong:
        r = api.client.request(method, api.url(path), headers=api.headers, json={})
        inner = assert_fault(r, 405)
        assert method in inner["message"], inner
        assert "allow" in {k.lower() for k in r.headers}
    assert api.get(f"/v2/{{p}}/volumes/{vol['id']}").json()["volume"]["status"] == "available"
