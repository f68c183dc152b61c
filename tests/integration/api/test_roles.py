"""docs/roles.md, enforced: every route of the app, walked without a token and with a
member's and an admin's token; the table in the document lists exactly the app's routes."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from openevs.api.app import create_app
from openevs.services import identity
from tests.integration.api.conftest import second_project
from tests.integration.conftest import Api

ROLES_MD = Path(__file__).resolve().parents[3] / "docs" / "roles.md"
PUBLIC = {"GET /", "GET /v2", "GET /v2/", "GET /v3", "GET /v3/", "GET /openapi.json", "GET /docs",
          "GET /docs/oauth2-redirect"}  # fmt: skip
LOGIN = "POST /v3/auth/tokens"
TOKENS = {"GET /v3/auth/tokens", "HEAD /v3/auth/tokens", "DELETE /v3/auth/tokens"}
PROJECT_PATH = re.compile(r"^/v(2|2\.1|3)/\{project_id\}/")
MEMBER_PASSWORD = "member-a-password"


def app_routes(app: FastAPI) -> list[str]:
    """"METHOD path" of every route, the included routers' ones too."""
    found = []
    for route in app.router.routes:
        inner = getattr(route, "original_router", None)
        for r in inner.routes if inner is not None else [route]:
            methods = set(getattr(r, "methods", set()))
            methods = methods - {"HEAD"} if methods != {"HEAD"} else methods
            found += [f"{m} {r.path}" for m in sorted(methods)]
    return found


def documented_routes() -> list[str]:
    return re.findall(r"^\| `([A-Z]+ /[^`]*)` \|", ROLES_MD.read_text(), flags=re.M)


def fill(path: str, project_id: str) -> str:
    names = ("volume_id", "server_id", "replication_id", "group_id", "type_id", "snapshot_id", "key")
    ids = {name: uuid.uuid4().hex for name in names}
    return path.format(project_id=project_id, **ids)


def call(api: Api, route: str, project_id: str, token: str | None) -> Any:
    method, path = route.split(" ", 1)
    headers = {"X-Auth-Token": token} if token else {}
    body = {} if method in ("POST", "PUT") else None
    return api.client.request(method, api.base + fill(path, project_id), json=body, headers=headers)


@pytest.fixture
def roles(api: Api) -> dict[str, Api]:
    with api.runtime.db.session() as session:
        identity.create_user(session, "member-a", MEMBER_PASSWORD, "admin", role="member")
    member = api.login("member-a", MEMBER_PASSWORD, "admin")
    other = second_project(api)
    return {"admin": api, "member": member, "other": other}


def test_the_document_lists_every_route(api: Api) -> None:
    routes = app_routes(create_app(api.runtime))
    assert sorted(documented_routes()) == sorted(routes)
    ruled = PUBLIC | TOKENS | {LOGIN}
    unknown = [r for r in routes if r not in ruled and not PROJECT_PATH.match(r.split(" ")[1])]
    assert not unknown, f"routes with no rule in docs/roles.md: {unknown}"
    assert not [r for r in routes if "/users" in r or "/projects" in r or "role_assignments" in r]  # rule 1


def test_every_route_with_both_roles(api: Api, roles: dict[str, Api]) -> None:
    admin, member, other = roles["admin"], roles["member"], roles["other"]
    walked = 0
    for route in app_routes(create_app(api.runtime)):
        if route == LOGIN:
            continue
        anonymous = call(api, route, admin.project_id, None)
        if route in PUBLIC:
            assert anonymous.status_code in (200, 300), route  # GET / is Cinder's 300 Multiple Choices
            for who in (member, admin):
                assert call(api, route, who.project_id, who.token).status_code == anonymous.status_code, route
            walked += 1
            continue
        assert anonymous.status_code == 401, f"{route} without a token: {anonymous.status_code}"
        if route in TOKENS:
            continue  # test_tokens
        # rule 2: in their own project a member gets what an admin gets, never a 401/403/5xx
        as_member = call(api, route, member.project_id, member.token)
        as_admin = call(api, route, admin.project_id, admin.token)
        assert as_member.status_code == as_admin.status_code, (route, as_member.text, as_admin.text)
        assert as_member.status_code not in (401, 403), (route, as_member.text)
        assert as_member.status_code < 500, (route, as_member.text)
        # rule 3: another project's path is refused for both, whatever the role
        for who in (member, admin):
            r = call(api, route, other.project_id, who.token)
            assert r.status_code == 400 and "EVS.0001" in r.text, (route, r.status_code, r.text)
        walked += 1
    assert walked >= 40


def ask(caller: Api, method: str, subject: str) -> int:
    headers = {**caller.headers, "X-Subject-Token": subject}
    return caller.client.request(method, caller.base + "/v3/auth/tokens", headers=headers).status_code


def revoke(caller: Api, subject: str) -> int:
    return ask(caller, "DELETE", subject)


def test_tokens(roles: dict[str, Api]) -> None:
    admin, member, other = roles["admin"], roles["member"], roles["other"]
    spare = member.login("member-a", MEMBER_PASSWORD, "admin").token
    for method in ("GET", "HEAD"):
        assert ask(member, method, spare) == 200  # their own
        assert ask(member, method, other.token) == 404  # someone else's
        assert ask(admin, method, other.token) == 200  # anyone's
    assert revoke(member, other.token) == 404
    assert other.get("/v2/{p}/volumes").status_code == 200  # still valid
    assert revoke(member, spare) == 204
    assert revoke(admin, other.token) == 204
    assert other.get("/v2/{p}/volumes").status_code == 401


def test_only_an_admin_sees_every_project(roles: dict[str, Api]) -> None:
    admin, member, other = roles["admin"], roles["member"], roles["other"]
    theirs = other.create_volume()["id"]
    mine = member.create_volume()["id"]
    for path in ("/v2/{p}/volumes", "/v2/{p}/volumes/detail"):
        assert {v["id"] for v in admin.get(path).json()["volumes"]} == {mine}
        every = admin.get(path, params={"all_tenants": "1"})
        assert every.status_code == 200
        assert {mine, theirs} <= {v["id"] for v in every.json()["volumes"]}
        refused = member.get(path, params={"all_tenants": "1"})
        assert refused.status_code == 403 and "forbidden" in refused.json()
        assert theirs not in refused.text
        assert member.get(path, params={"all_tenants": "0"}).status_code == 200
    detail = admin.get("/v2/{p}/volumes/detail", params={"all_tenants": "true"}).json()["volumes"]
    assert {v["id"]: v["os-vol-tenant-attr:tenant_id"] for v in detail}[theirs] == other.project_id
