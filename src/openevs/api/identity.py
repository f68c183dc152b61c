"""Keystone v3 subset: discovery, password tokens, validation, revocation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from openevs.api.auth import RuntimeDep, TokenDep
from openevs.api.timefmt import keystone_time
from openevs.domain.errors import InvalidInput, NotFound, Unauthorized
from openevs.runtime import Runtime
from openevs.services import identity
from openevs.services.identity import DEFAULT_DOMAIN_ID, DEFAULT_DOMAIN_NAME, TokenInfo

router = APIRouter()

V3_UPDATED = "2024-01-01T00:00:00Z"


def base_url(runtime: Runtime, request: Request) -> str:
    if runtime.settings.public_url:
        return runtime.settings.endpoint
    return str(request.base_url).rstrip("/")


def v3_version(url: str) -> dict[str, Any]:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": V3_UPDATED,
        "links": [{"rel": "self", "href": f"{url}/v3/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    }


@router.get("/v3", include_in_schema=True)
@router.get("/v3/", include_in_schema=False)
def identity_version(runtime: RuntimeDep, request: Request) -> dict[str, Any]:
    return {"version": v3_version(base_url(runtime, request))}


class _Domain(BaseModel):
    id: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, max_length=255)


class _User(BaseModel):
    id: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, max_length=255)
    domain: _Domain | None = None
    password: str = Field(max_length=4096)


class _Password(BaseModel):
    user: _User


class _Identity(BaseModel):
    methods: list[str]
    password: _Password | None = None


class _Project(BaseModel):
    id: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, max_length=255)
    domain: _Domain | None = None


class _Scope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: _Project


class _Auth(BaseModel):
    identity: _Identity
    scope: _Scope | None = None


class AuthRequest(BaseModel):
    auth: _Auth


def catalog(url: str, project_id: str, region: str) -> list[dict[str, Any]]:
    def service(kind: str, name: str, path: str) -> dict[str, Any]:
        return {
            "id": f"{kind}-{region}",
            "type": kind,
            "name": name,
            "endpoints": [
                {
                    "id": f"{kind}-{iface}",
                    "interface": iface,
                    "region": region,
                    "region_id": region,
                    "url": f"{url}{path}",
                }
                for iface in ("public", "internal", "admin")
            ],
        }

    return [
        service("volumev2", "cinderv2", f"/v2/{project_id}"),
        service("compute", "nova", f"/v2.1/{project_id}"),
        service("identity", "keystone", "/v3"),
        # The EVS v3 endpoint, where the one documented v3 route lives (snapshot rollback).
        # Not `volumev3`: openstacksdk prefers that alias of block-storage over volumev2
        # and would discover versions there (docs/decisions.md "Rollback in the catalog").
        service("evs", "evs", f"/v3/{project_id}"),
    ]


def token_body(info: TokenInfo, url: str, region: str) -> dict[str, Any]:
    domain = {"id": DEFAULT_DOMAIN_ID, "name": DEFAULT_DOMAIN_NAME}
    return {
        "token": {
            "methods": ["password"],
            "audit_ids": [info.token_hash[:22]],
            "issued_at": keystone_time(info.issued_at),
            "expires_at": keystone_time(info.expires_at),
            "user": {
                "id": info.user_id,
                "name": info.user_name,
                "domain": domain,
                "password_expires_at": None,
            },
            "project": {"id": info.project_id, "name": info.project_name, "domain": domain},
            "roles": [{"id": info.role, "name": info.role}]
            + ([{"id": "member", "name": "member"}] if info.role == "admin" else []),
            "is_domain": False,
            "catalog": catalog(url, info.project_id, region),
        }
    }


@router.post("/v3/auth/tokens", status_code=201)
def issue_token(body: AuthRequest, runtime: RuntimeDep, request: Request) -> JSONResponse:
    ident = body.auth.identity
    if "password" not in ident.methods or ident.password is None:
        raise InvalidInput('only the "password" auth method is supported')
    user = ident.password.user
    user_spec: dict[str, object] = {
        "id": user.id,
        "name": user.name,
        "domain": user.domain.model_dump() if user.domain else {},
    }
    project_spec: dict[str, object] | None = None
    if body.auth.scope is not None:
        p = body.auth.scope.project
        project_spec = {"id": p.id, "name": p.name, "domain": p.domain.model_dump() if p.domain else None}
    with runtime.db.session() as session:
        token, info = identity.authenticate(
            session, user_spec, user.password, project_spec, runtime.settings.token_ttl_s
        )
    body_out = token_body(info, base_url(runtime, request), runtime.settings.region)
    return JSONResponse(body_out, status_code=201, headers={"X-Subject-Token": token})


def _subject(runtime: Runtime, subject: str | None) -> TokenInfo:
    if not subject:
        raise InvalidInput("X-Subject-Token header is required")
    with runtime.db.session() as session:
        try:
            return identity.validate_token(session, subject)
        except Unauthorized as exc:
            raise NotFound(f"token not found: {exc.message}") from exc


@router.get("/v3/auth/tokens")
def check_token(
    caller: TokenDep,
    runtime: RuntimeDep,
    request: Request,
    x_subject_token: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    info = _subject(runtime, x_subject_token)
    if info.user_id != caller.user_id and not caller.is_admin:
        raise NotFound("token not found")
    body = token_body(info, base_url(runtime, request), runtime.settings.region)
    return JSONResponse(body, headers={"X-Subject-Token": x_subject_token or ""})


@router.head("/v3/auth/tokens")
def head_token(
    caller: TokenDep,
    runtime: RuntimeDep,
    x_subject_token: Annotated[str | None, Header()] = None,
) -> Response:
    info = _subject(runtime, x_subject_token)
    if info.user_id != caller.user_id and not caller.is_admin:
        raise NotFound("token not found")
    return Response(status_code=200)


@router.delete("/v3/auth/tokens", status_code=204)
def delete_token(
    caller: TokenDep,
    runtime: RuntimeDep,
    x_subject_token: Annotated[str | None, Header()] = None,
) -> Response:
    info = _subject(runtime, x_subject_token)
    if info.user_id != caller.user_id and not caller.is_admin:
        raise NotFound("token not found")
    with runtime.db.session() as session:
        identity.revoke_token(session, x_subject_token or "")
    return Response(status_code=204)
