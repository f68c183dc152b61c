"""Helpers for the HTTP API tests: fault-body assertions and a second project.

Every refusal must be an OpenStack fault body `{"<faultName>": {"code": N,
"message": "..."}}` whose message tells the client what to fix.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from openevs.services import identity
from tests.integration.conftest import Api

EVS_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")
NOVA_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
KEYSTONE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def assert_fault(
    r: httpx.Response, status: int, name: str | None = None, error_code: str | None = None,
    mentions: str | None = None,
) -> dict[str, Any]:
    """Check a fault response and return its inner object."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and len(body) == 1, body
    ((fault_name, inner),) = body.items()
    if name is not None:
        assert fault_name == name, body
    assert isinstance(inner, dict), body
    assert inner["code"] == status, body
    assert isinstance(inner["message"], str) and len(inner["message"]) >= 10, body
    if error_code is not None:
        assert inner.get("error_code") == error_code, body
    if mentions is not None:
        assert mentions.lower() in inner["message"].lower(), body
    return dict(inner)


def assert_client_error(r: httpx.Response) -> dict[str, Any]:
    """Any 4xx with a well-formed fault body."""
    assert 400 <= r.status_code < 500, f"expected a 4xx, got {r.status_code}: {r.text[:500]}"
    return assert_fault(r, r.status_code)


def second_project(api: Api, project: str = "tenant-b", user: str = "user-b",
                   password: str = "password-b-123", role: str = "member") -> Api:
    """A new project with one user, logged in."""
    with api.runtime.db.session() as session:
        identity.create_project(session, project)
        identity.create_user(session, user, password, project, role=role)
    return api.login(user, password, project)


def create_server(api: Api, name: str = "vm", az: str = "az1.dc1") -> dict[str, Any]:
    r = api.post("/v2.1/{p}/servers", {"server": {"name": name, "availability_zone": az,
                                                  "imageRef": "img", "flavorRef": "1"}})
    assert r.status_code == 202, r.text
    sid = r.json()["server"]["id"]
    r = api.get(f"/v2.1/{{p}}/servers/{sid}")
    assert r.status_code == 200, r.text
    return dict(r.json()["server"])


def attach(api: Api, server_id: str, volume_id: str) -> httpx.Response:
    return api.post(f"/v2.1/{{p}}/servers/{server_id}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": volume_id}})
