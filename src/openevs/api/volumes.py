"""Cinder v2 disk routes as EVS documents them: volumes, types, AZs."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError

from openevs.api.auth import RuntimeDep, ScopedDep
from openevs.api.identity import base_url
from openevs.api.list_query import ListQuery, Text, listed
from openevs.api.timefmt import evs_time
from openevs.db.models import Attachment, Volume
from openevs.domain import codes
from openevs.domain.errors import Forbidden, InvalidInput, NotFound
from openevs.services import connections, volumes
from openevs.services.identity import TokenInfo

router = APIRouter(prefix="/v2/{project_id}")

TYPE_NAMESPACE = uuid.UUID("7d1c5ae2-3f0a-4c55-9f54-0e8b5b6f2a10")


def _not_bool(value: Any) -> Any:
    # JSON true is no size: pydantic's lax int would read it as 1 GB.
    if isinstance(value, bool):
        raise ValueError("size must be an integer number of GB, not a boolean")
    return value


class VolumeCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    size: Annotated[int, BeforeValidator(_not_bool)]
    availability_zone: str = Field(max_length=255)
    name: str | None = Field(default=None, max_length=1024)
    description: str | None = Field(default=None, max_length=1024)
    volume_type: str | None = Field(default=None, max_length=255)
    metadata: dict[str, Any] | None = None
    multiattach: bool = False
    shareable: bool | None = None
    imageRef: str | None = None  # noqa: N815 - the API's field name
    snapshot_id: str | None = Field(default=None, max_length=64)
    source_volid: str | None = Field(default=None, max_length=64)
    backup_id: str | None = None


class VolumeCreateBody(BaseModel):
    volume: VolumeCreate


class VolumeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=1024)
    description: str | None = Field(default=None, max_length=1024)
    display_name: str | None = Field(default=None, max_length=1024)
    display_description: str | None = Field(default=None, max_length=1024)
    metadata: dict[str, Any] | None = None


class VolumeUpdateBody(BaseModel):
    volume: VolumeUpdate


class ExtendArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    new_size: StrictInt


class ConnectorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connector: dict[str, Any]


def volume_links(url: str, project_id: str, volume_id: str) -> list[dict[str, str]]:
    return [
        {"href": f"{url}/v2/{project_id}/volumes/{volume_id}", "rel": "self"},
        {"href": f"{url}/{project_id}/volumes/{volume_id}", "rel": "bookmark"},
    ]


def attachment_view(att: Attachment) -> dict[str, Any]:
    return {
        "id": att.volume_id,
        "attachment_id": att.id,
        "volume_id": att.volume_id,
        "server_id": att.server_id,
        "host_name": None,
        "device": att.device,
        "attached_at": evs_time(att.created_at),
    }


def volume_view(v: Volume, atts: list[Attachment], url: str) -> dict[str, Any]:
    return {
        "id": v.id,
        "links": volume_links(url, v.project_id, v.id),
        "name": v.name,
        "status": v.status,
        "attachments": [attachment_view(a) for a in atts],
        "availability_zone": v.availability_zone,
        "bootable": "true" if v.bootable else "false",
        "encrypted": v.metadata_.get("__system__encrypted") == "1",
        "created_at": evs_time(v.created_at),
        "updated_at": evs_time(v.updated_at),
        "description": v.description,
        "volume_type": v.volume_type,
        "replication_status": "disabled",
        "consistencygroup_id": None,
        "source_volid": v.source_volid,
        "snapshot_id": v.snapshot_id,
        "metadata": v.metadata_,
        "volume_image_metadata": {},
        "size": v.size_gb,
        "user_id": v.user_id,
        "os-vol-tenant-attr:tenant_id": v.project_id,
        "os-vol-host-attr:host": f"openevs@{v.availability_zone}#{v.volume_type}",
        "shareable": v.multiattach,
        "multiattach": v.multiattach,
        "storage_cluster_id": None,
    }


def _parse(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in (where, *err["loc"]) if p != "")
        msg = "is not an allowed key here" if err["type"] == "extra_forbidden" else err["msg"]
        raise InvalidInput(f"{loc}: {msg}", code=codes.MALFORMED_REQUEST) from None


@router.post("/volumes", status_code=202)
def create_volume(
    project_id: str, body: VolumeCreateBody, token: ScopedDep, runtime: RuntimeDep, request: Request
) -> JSONResponse:
    spec = body.volume
    for field in ("imageRef", "backup_id"):
        if getattr(spec, field):
            raise InvalidInput(f"creating a disk from {field} is not supported; omit {field}")
    if spec.snapshot_id and spec.source_volid:
        raise InvalidInput("specify only one of snapshot_id and source_volid", code="EVS.1016")
    new = volumes.NewVolume(
        size_gb=spec.size,
        availability_zone=spec.availability_zone,
        name=spec.name,
        description=spec.description,
        volume_type=spec.volume_type,
        metadata=spec.metadata,
        multiattach=bool(spec.multiattach or spec.shareable),
        snapshot_id=spec.snapshot_id or None,
        source_volid=spec.source_volid or None,
    )
    volume = volumes.create_volume(runtime, project_id, token.user_id, new)
    return JSONResponse({"volume": volume_view(volume, [], base_url(runtime, request))}, 202)


class VolumeListQuery(ListQuery):
    """Query of GET /volumes and /volumes/detail: paging, Cinder's `sort`, three filters,
    and Cinder's `all_tenants` (admins only, docs/roles.md)."""

    FILTERS = ("name", "status", "availability_zone")
    all_tenants: Text = None
    offset: Text = None
    sort: Text = None  # Cinder's "sort=key:dir", read when sort_key is absent
    name: Text = None
    status: Text = None
    availability_zone: Text = None

    @property
    def paging_offset(self) -> str | None:
        return self.offset

    @property
    def paging_sort_key(self) -> str | None:
        return self.sort_key or self.sort


VolumeListDep = Annotated[VolumeListQuery, Query()]


def _every_project(token: TokenInfo, query: VolumeListQuery) -> bool:
    """Whether the list spans every project: `all_tenants=1` (or true), for an admin only."""
    wanted = (query.all_tenants or "").strip().lower() in ("1", "true", "yes")
    if wanted and not token.is_admin:
        raise Forbidden("all_tenants lists the volumes of every project: only an admin may ask for it")
    return wanted


def _list(
    project_id: str,
    token: TokenInfo,
    runtime: RuntimeDep,
    request: Request,
    detail: bool,
    query: VolumeListQuery,
) -> JSONResponse:
    scope = None if _every_project(token, query) else project_id
    page = query.page(volumes.VOLUME_SORT_KEYS + ("size",))
    if page.sort_key == "size":
        page = type(page)(**{**page.__dict__, "sort_key": "size_gb"})
    url = base_url(runtime, request)
    with runtime.db.session() as session:
        rows = volumes.list_volumes(session, scope, page, query.filters())
        atts = volumes.attachments_of(session, [v.id for v in rows])
    if detail:
        items = [volume_view(v, atts[v.id], url) for v in rows]
    else:
        items = [
            {"id": v.id, "name": v.name, "links": volume_links(url, v.project_id, v.id)} for v in rows
        ]
    result: dict[str, Any] = {"volumes": items}
    if rows and len(rows) == page.limit:
        every = "&all_tenants=1" if scope is None else ""
        href = f"{url}/v2/{project_id}/volumes?limit={page.limit}&marker={rows[-1].id}{every}"
        result["volumes_links"] = [{"rel": "next", "href": href}]
    return listed(result)


@router.get("/volumes")
def list_volumes(
    project_id: str, token: ScopedDep, runtime: RuntimeDep, request: Request, query: VolumeListDep
) -> JSONResponse:
    return _list(project_id, token, runtime, request, False, query)


@router.get("/volumes/detail")
def list_volumes_detail(
    project_id: str, token: ScopedDep, runtime: RuntimeDep, request: Request, query: VolumeListDep
) -> JSONResponse:
    return _list(project_id, token, runtime, request, True, query)


@router.get("/volumes/{volume_id}")
def show_volume(
    project_id: str, volume_id: str, token: ScopedDep, runtime: RuntimeDep, request: Request
) -> dict[str, Any]:
    shown = volumes.show_volume(runtime, project_id, volume_id)
    return {"volume": volume_view(shown.volume, shown.attachments, base_url(runtime, request))}


@router.put("/volumes/{volume_id}")
def update_volume(
    project_id: str, volume_id: str, body: VolumeUpdateBody, token: ScopedDep,
    runtime: RuntimeDep, request: Request,
) -> dict[str, Any]:
    spec = body.volume
    shown = volumes.update_volume(
        runtime, project_id, volume_id,
        spec.name if spec.name is not None else spec.display_name,
        spec.description if spec.description is not None else spec.display_description,
        spec.metadata,
    )
    return {"volume": volume_view(shown.volume, shown.attachments, base_url(runtime, request))}


@router.delete("/volumes/{volume_id}", status_code=202)
def delete_volume(
    project_id: str, volume_id: str, token: ScopedDep, runtime: RuntimeDep,
    cascade: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    volumes.delete_volume(runtime, project_id, volume_id, (cascade or "").lower() in ("true", "1"))
    return Response(status_code=202)


@router.post("/volumes/{volume_id}/action")
def volume_action(
    project_id: str, volume_id: str, token: ScopedDep, runtime: RuntimeDep,
    body: Annotated[dict[str, Any], Body()],
) -> Response:
    if len(body) != 1:
        raise InvalidInput(
            "an action body must have exactly one key, e.g. {\"os-extend\": {\"new_size\": 20}}",
            code=codes.MALFORMED_REQUEST,
        )
    (action, args), = body.items()
    if action == "os-extend":
        parsed = _parse(ExtendArgs, args, "os-extend")
        volumes.extend_volume(runtime, project_id, volume_id, parsed.new_size)
        return Response(status_code=202)
    if action == "os-initialize_connection":
        parsed = _parse(ConnectorArgs, args, action)
        info = connections.initialize_connection(runtime, project_id, volume_id, parsed.connector)
        return JSONResponse({"connection_info": info})
    if action == "os-terminate_connection":
        parsed = _parse(ConnectorArgs, args, action)
        connections.terminate_connection(runtime, project_id, volume_id, parsed.connector)
        return Response(status_code=202)
    raise InvalidInput(
        f"unknown action {action[:64]!r}; supported: os-extend, os-initialize_connection, "
        "os-terminate_connection",
        code=codes.MALFORMED_REQUEST,
    )


def type_view(name: str, az: str | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid5(TYPE_NAMESPACE, name)),
        "name": name,
        "description": None,
        "is_public": True,
        "qos_specs_id": None,
        "extra_specs": {"volume_backend_name": name, "availability-zone": az or ""},
    }


@router.get("/types")
def list_types(project_id: str, token: ScopedDep, runtime: RuntimeDep) -> dict[str, Any]:
    azs = ",".join(runtime.settings.azs)
    return {"volume_types": [type_view(t, azs) for t in runtime.settings.volume_types]}


@router.get("/types/{type_id}")
def show_type(project_id: str, type_id: str, token: ScopedDep, runtime: RuntimeDep) -> dict[str, Any]:
    azs = ",".join(runtime.settings.azs)
    for name in runtime.settings.volume_types:
        if type_id in (name, str(uuid.uuid5(TYPE_NAMESPACE, name))):
            return {"volume_type": type_view(name, azs)}
    raise NotFound(f"volume type {type_id[:64]} could not be found")


@router.get("/os-availability-zone")
def list_azs(project_id: str, token: ScopedDep, runtime: RuntimeDep) -> dict[str, Any]:
    healthy = connections.agent_availability(runtime)
    return {
        "availabilityZoneInfo": [
            {"zoneName": az, "zoneState": {"available": healthy.get(az, False)}}
            for az in runtime.settings.azs
        ]
    }
