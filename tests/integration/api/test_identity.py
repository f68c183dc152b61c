"""Keystone v3 subset as a strict client sees it: discovery, password tokens
(by project id, by name and domain), the catalog, validation, revocation,
expiry, hashed storage, and isolation between projects.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from openevs.db.models import Token
from tests.integration.api.conftest import (
    KEYSTONE_TIME,
    assert_client_error,
    assert_fault,
    attach,
    create_server,
    second_project,
)
from tests.integration.conftest import ADMIN_PASSWORD, Api


def password_body(user: dict[str, Any], password: str, scope: dict[str, Any] | None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "identity": {"methods": ["password"], "password": {"user": {**user, "password": password}}}
    }
    if scope is not None:
        auth["scope"] = {"project": scope}
    return {"auth": auth}


def issue(api: Api, body: dict[str, Any]) -> Any:
    return api.client.post(f"{api.base}/v3/auth/tokens", json=body)


def check_v3_discovery(api: Api) -> None:
    r = api.client.get(f"{api.base}/v3")
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    assert version["id"].startswith("v3")
    assert version["status"] == "stable"
    assert any(link["rel"] == "self" and link["href"].endswith("/v3/") for link in version["links"])


def check_token_body(api: Api, r: Any) -> dict[str, Any]:
    assert r.status_code == 201, r.text
    token = r.headers["X-Subject-Token"]
    assert len(token) >= 32
    body = r.json()["token"]
    assert KEYSTONE_TIME.match(body["expires_at"]), body["expires_at"]
    assert body["expires_at"].endswith("Z")
    assert KEYSTONE_TIME.match(body["issued_at"])
    assert body["expires_at"] > body["issued_at"]
    assert body["methods"] == ["password"]
    assert body["user"]["name"] == "admin" and isinstance(body["user"]["id"], str)
    assert body["user"]["domain"]["id"] == "default"
    assert body["project"] == {"id": api.project_id, "name": "admin",
                               "domain": {"id": "default", "name": "Default"}}
    assert {role["name"] for role in body["roles"]} >= {"admin"}
    catalog = {entry["type"]: entry for entry in body["catalog"]}
    assert "volumev2" in catalog and "compute" in catalog
    assert "volumev3" not in catalog and "block-storage" not in catalog
    for kind, prefix in (("volumev2", "/v2/"), ("compute", "/v2.1/"), ("evs", "/v3/")):
        endpoints = catalog[kind]["endpoints"]
        assert {e["interface"] for e in endpoints} >= {"public"}
        for endpoint in endpoints:
            assert endpoint["interface"] in ("public", "internal", "admin")
            assert isinstance(endpoint["region"], str) and endpoint["region"]
            assert endpoint["region_id"] == endpoint["region"]
            assert endpoint["url"].startswith(api.base)
            assert endpoint["url"].endswith(f"{prefix}{api.project_id}")
    return dict(body)


def test_token_by_project_id_and_by_name_with_domain(api: Api) -> None:
    user = {"name": "admin", "domain": {"name": "Default"}}
    r = issue(api, password_body(user, ADMIN_PASSWORD, {"id": api.project_id}))
    check_token_body(api, r)
    # The new token works.
    r2 = api.client.get(api.url("/v2/{p}/volumes"), headers={"X-Auth-Token": r.headers["X-Subject-Token"]})
    assert r2.status_code == 200, r2.text
    check_token_body(api, issue(api, password_body(user, ADMIN_PASSWORD,
                                                   {"name": "admin", "domain": {"name": "Default"}})))
    check_token_body(api, issue(api, password_body({"name": "admin", "domain": {"id": "default"}},
                                                   ADMIN_PASSWORD,
                                                   {"name": "admin", "domain": {"id": "default"}})))
    # Without a scope, the token is scoped to the user's project.
    check_token_body(api, issue(api, password_body(user, ADMIN_PASSWORD, None)))
    tokens = {issue(api, password_body(user, ADMIN_PASSWORD, None)).headers["X-Subject-Token"]
              for _ in range(3)}
    assert len(tokens) == 3, "every token must be new"


BAD_CREDENTIALS: list[tuple[dict[str, Any], str, dict[str, Any] | None]] = [
    ({"name": "admin", "domain": {"name": "Default"}}, "wrong-password", None),
    ({"name": "admin", "domain": {"name": "Default"}}, "", None),
    ({"name": "nobody", "domain": {"name": "Default"}}, ADMIN_PASSWORD, None),
    ({"name": "admin", "domain": {"name": "Other"}}, ADMIN_PASSWORD, None),
    ({"id": "no-such-user-id"}, ADMIN_PASSWORD, None),
    ({"name": "admin", "domain": {"name": "Default"}}, ADMIN_PASSWORD,
     {"name": "no-such-project", "domain": {"name": "Default"}}),
    ({"name": "admin", "domain": {"name": "Default"}}, ADMIN_PASSWORD, {"id": "no-such-project"}),
    ({"name": "admin", "domain": {"name": "Default"}}, ADMIN_PASSWORD,
     {"name": "admin", "domain": {"id": "other-domain"}}),
]

MALFORMED_AUTH: list[Any] = [
    {},
    {"auth": {}},
    {"auth": {"identity": {"methods": ["token"], "token": {"id": "x"}}}},
    {"auth": {"identity": {"methods": ["password"]}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin"}}}}},
    {"auth": {"identity": {"methods": "password", "password": {}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"password": "x" * 9}}}}},
    password_body({"name": "admin", "domain": {"name": "Default"}}, ADMIN_PASSWORD, {"name": "admin"}),
    password_body({"name": "admin", "domain": "Default"}, ADMIN_PASSWORD, None),
    password_body({"name": 7, "domain": {"name": "Default"}}, ADMIN_PASSWORD, None),
    password_body({"name": "admin", "domain": {"name": "Default"}}, ADMIN_PASSWORD, {}),
    [],
    "auth",
    None,
]


def test_bad_credentials_are_401_and_malformed_requests_4xx(api: Api) -> None:
    for user, password, scope in BAD_CREDENTIALS:
        r = issue(api, password_body(user, password, scope))
        assert_fault(r, 401, "unauthorized")
        assert "X-Subject-Token" not in r.headers
    for body in MALFORMED_AUTH:
        r = issue(api, body)
        assert_client_error(r)
        assert "X-Subject-Token" not in r.headers


def test_validate_and_revoke_token(api: Api) -> None:
    body = password_body({"name": "admin", "domain": {"name": "Default"}}, ADMIN_PASSWORD,
                         {"id": api.project_id})
    subject = issue(api, body).headers["X-Subject-Token"]
    check = {**api.headers, "X-Subject-Token": subject}

    r = api.client.get(f"{api.base}/v3/auth/tokens", headers=check)
    assert r.status_code == 200, r.text
    assert r.headers["X-Subject-Token"] == subject
    assert r.json()["token"]["project"]["id"] == api.project_id
    assert api.client.head(f"{api.base}/v3/auth/tokens", headers=check).status_code == 200

    # Validating needs a caller token, and a subject.
    assert_fault(api.client.get(f"{api.base}/v3/auth/tokens", headers={"X-Subject-Token": subject}),
                 401, "unauthorized")
    assert_client_error(api.client.get(f"{api.base}/v3/auth/tokens", headers=api.headers))
    assert_fault(api.client.get(f"{api.base}/v3/auth/tokens",
                                headers={**api.headers, "X-Subject-Token": "bogus"}), 404, "itemNotFound")

    r = api.client.delete(f"{api.base}/v3/auth/tokens", headers=check)
    assert r.status_code == 204, r.text

    # The revoked token is dead everywhere; the caller's token still works.
    dead = {"X-Auth-Token": subject}
    for path in ("/v2/{p}/volumes", "/v2/{p}/volumes/detail", "/v2/{p}/types",
                 "/v2/{p}/os-availability-zone", "/v2.1/{p}/servers"):
        assert_fault(api.client.get(api.url(path), headers=dead), 401, "unauthorized")
    assert_fault(api.client.post(api.url("/v2/{p}/volumes"), headers=dead,
                                 json={"volume": {"size": 1, "availability_zone": "az1.dc1"}}),
                 401, "unauthorized")
    assert_fault(api.client.get(f"{api.base}/v3/auth/tokens", headers={**dead, "X-Subject-Token": subject}),
                 401, "unauthorized")
    assert api.client.head(f"{api.base}/v3/auth/tokens", headers=check).status_code == 404
    assert_fault(api.client.get(f"{api.base}/v3/auth/tokens", headers=check), 404, "itemNotFound")
    assert_client_error(api.client.delete(f"{api.base}/v3/auth/tokens", headers=check))
    assert api.get("/v2/{p}/volumes").status_code == 200


def test_discovery_is_open_and_everything_else_needs_a_token(api: Api) -> None:
    check_v3_discovery(api)
    url = api.url("/v2/{p}/volumes")
    r = api.client.get(url)
    inner = assert_fault(r, 401, "unauthorized")
    assert "X-Auth-Token" in inner["message"]
    assert "WWW-Authenticate" in r.headers
    for token in ("garbage", "x" * 600, api.token + "x", api.token[:-1]):
        assert_fault(api.client.get(url, headers={"X-Auth-Token": token}), 401, "unauthorized")


def test_token_expires(controller_factory: Callable[..., Api]) -> None:
    api = controller_factory(token_ttl_s=1)
    deadline = time.monotonic() + 15
    while True:
        r = api.get("/v2/{p}/volumes")
        if r.status_code == 401:
            break
        assert r.status_code == 200, r.text
        assert time.monotonic() < deadline, "token did not expire"
        time.sleep(0.1)
    inner = assert_fault(r, 401, "unauthorized")
    assert "expired" in inner["message"] or "token" in inner["message"]
    assert_fault(api.get("/v2.1/{p}/servers"), 401, "unauthorized")


def test_tokens_are_stored_hashed(api: Api) -> None:
    body = password_body({"name": "admin", "domain": {"name": "Default"}}, ADMIN_PASSWORD,
                         {"id": api.project_id})
    tokens = [api.token, issue(api, body).headers["X-Subject-Token"]]
    with api.runtime.db.session() as session:
        rows = list(session.scalars(select(Token)))
        dumped = [repr({c.name: getattr(row, c.name) for c in Token.__table__.columns}) for row in rows]
        hashes = {row.token_hash for row in rows}
    assert len(rows) >= 2
    for token in tokens:
        assert hashlib.sha256(token.encode()).hexdigest() in hashes
        assert not any(token in d for d in dumped)


# --- isolation between projects --------------------------------------------


def test_projects_are_isolated(api: Api) -> None:
    vol = api.create_volume(size=1, name="a-secret")
    server = create_server(api, "a-vm")
    assert attach(api, server["id"], vol["id"]).status_code == 200
    spare = api.create_volume(size=1, name="a-spare")
    b = second_project(api)
    assert b.project_id != api.project_id

    # A's ids under B's own URLs: 404, as if they did not exist.
    vid, sid = vol["id"], server["id"]
    for r in (
        b.get(f"/v2/{{p}}/volumes/{vid}"),
        b.put(f"/v2/{{p}}/volumes/{vid}", {"volume": {"name": "stolen"}}),
        b.delete(f"/v2/{{p}}/volumes/{spare['id']}"),
        b.post(f"/v2/{{p}}/volumes/{spare['id']}/action", {"os-extend": {"new_size": 2}}),
        b.get(f"/v2.1/{{p}}/servers/{sid}"),
        b.delete(f"/v2.1/{{p}}/servers/{sid}"),
        b.post(f"/v2.1/{{p}}/servers/{sid}/action", {"os-stop": None}),
        b.get(f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments"),
        b.get(f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments/{vid}"),
        b.delete(f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments/{vid}"),
    ):
        assert_fault(r, 404, "itemNotFound")

    # B attaching A's disk to its own server: 404 for the disk.
    b_server = create_server(b, "b-vm")
    assert_fault(attach(b, b_server["id"], spare["id"]), 404, "itemNotFound")

    # URLs naming A's project with B's token: refused (400 EVS.0001), nothing leaks.
    a_url = {"X-Auth-Token": b.token}
    for path in (f"/v2/{api.project_id}/volumes", f"/v2/{api.project_id}/volumes/detail",
                 f"/v2/{api.project_id}/volumes/{vid}", f"/v2.1/{api.project_id}/servers",
                 f"/v2.1/{api.project_id}/servers/{sid}"):
        r = b.client.get(f"{b.base}{path}", headers=a_url)
        inner = assert_client_error(r)
        assert r.status_code == 400 and inner.get("error_code") == "EVS.0001", r.text
        assert "a-secret" not in r.text and "a-vm" not in r.text
    r = b.client.delete(f"{b.base}/v2/{api.project_id}/volumes/{spare['id']}", headers=a_url)
    assert_client_error(r)

    # B's lists are empty of A's resources.
    assert b.get("/v2/{p}/volumes").json()["volumes"] == []
    assert b.get("/v2/{p}/volumes/detail").json()["volumes"] == []
    assert [s["id"] for s in b.get("/v2.1/{p}/servers/detail").json()["servers"]] == [b_server["id"]]
    assert b.get("/v2/{p}/volumes", params={"name": "a-secret"}).json()["volumes"] == []

    # A's resources are untouched.
    assert api.get(f"/v2/{{p}}/volumes/{vid}").json()["volume"]["name"] == "a-secret"
    assert api.get(f"/v2/{{p}}/volumes/{spare['id']}").json()["volume"]["status"] == "available"
    assert api.get(f"/v2.1/{{p}}/servers/{sid}").json()["server"]["status"] == "ACTIVE"

    # B's token cannot validate A's token.
    r = b.client.get(f"{b.base}/v3/auth/tokens", headers={**b.headers, "X-Subject-Token": api.token})
    assert_fault(r, 404, "itemNotFound")
