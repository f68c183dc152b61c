"""Nova v2.1 subset: servers, os-start/os-stop, os-volume_attachments."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from openevs.api.auth import RuntimeDep, ScopedDep
from openevs.api.identity import base_url
from openevs.api.list_query import ListQuery, Text
from openevs.api.timefmt import nova_time
from openevs.db.models import Attachment, Server
from openevs.domain.errors import InvalidInput
from openevs.domain.states import ServerStatus, ServerTrigger
from openevs.services import servers

router = APIRouter(prefix="/v2.1/{project_id}")


class ServerCreate(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(max_length=1024)
    availability_zone: str | None = Field(default=None, max_length=255)
    imageRef: str | None = Field(default=None, max_length=1024)  # noqa: N815
    flavorRef: str | int | None = None  # noqa: N815


class ServerCreateBody(BaseModel):
    server: ServerCreate


class AttachSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    volumeId: str = Field(max_length=64)  # noqa: N815
    device: str | None = Field(default=None, max_length=64)


class AttachBody(BaseModel):
    volumeAttachment: AttachSpec  # noqa: N815


def _links(url: str, project_id: str, server_id: str) -> list[dict[str, str]]:
    return [
        {"rel": "self", "href": f"{url}/v2.1/{project_id}/servers/{server_id}"},
        {"rel": "bookmark", "href": f"{url}/{project_id}/servers/{server_id}"},
    ]


def server_view(s: Server, atts: list[Attachment], url: str) -> dict[str, Any]:
    active = s.status == ServerStatus.ACTIVE
    return {
        "id": s.id,
        "name": s.name,
        "status": s.status,
        "tenant_id": s.project_id,
        "user_id": s.user_id,
        "created": nova_time(s.created_at),
        "updated": nova_time(s.updated_at or s.created_at),
        "OS-EXT-AZ:availability_zone": s.availability_zone,
        "OS-EXT-STS:vm_state": "active" if active else "stopped",
        "OS-EXT-STS:power_state": 1 if active else 4,
        "OS-EXT-STS:task_state": None,
        "os-extended-volumes:volumes_attached": [
            {"id": a.volume_id, "delete_on_termination": False} for a in atts
        ],
        "image": {"id": s.image_ref} if s.image_ref else "",
        "flavor": {"id": s.flavor_ref},
        "addresses": {},
        "metadata": {},
        "hostId": "",
        "links": _links(url, s.project_id, s.id),
    }


def attachment_view(a: Attachment) -> dict[str, Any]:
    return {"id": a.volume_id, "serverId": a.server_id, "volumeId": a.volume_id, "device": a.device}


@router.post("/servers", status_code=202)
def create_server(
    project_id: str, body: ServerCreateBody, token: ScopedDep, runtime: RuntimeDep, request: Request
) -> JSONResponse:
    spec = body.server
    server = servers.create_server(
            runtime,
            project_id,
            token.user_id,
            spec.name,
            spec.availability_zone,
            spec.imageRef or "",
            str(spec.flavorRef or ""),
    )
    url = base_url(runtime, request)
    return JSONResponse(
        {
            "server": {
                "id": server.id,
                "links": _links(url, project_id, server.id),
                "OS-DCF:diskConfig": "MANUAL",
                "security_groups": [{"name": "default"}],
            }
        },
        status_code=202,
    )


class ServerListQuery(ListQuery):
    """Query of GET /servers and /servers/detail: paging (no offset), name and status."""

    FILTERS = ("name", "status")
    name: Text = None
    status: Text = None


ServerListDep = Annotated[ServerListQuery, Query()]


def _list(
    project_id: str, runtime: RuntimeDep, request: Request, detail: bool, query: ServerListQuery
) -> dict[str, Any]:
    page = query.page(servers.SERVER_SORT_KEYS)
    url = base_url(runtime, request)
    with runtime.db.session() as session:
        rows = servers.list_servers(session, project_id, page, query.name, query.status)
        atts = {s.id: servers.attachments_of_server(session, s.id) for s in rows} if detail else {}
    if detail:
        return {"servers": [server_view(s, atts[s.id], url) for s in rows]}
    return {"servers": [{"id": s.id, "name": s.name, "links": _links(url, project_id, s.id)} for s in rows]}


@router.get("/servers")
def list_servers(
    project_id: str, token: ScopedDep, runtime: RuntimeDep, request: Request, query: ServerListDep
) -> dict[str, Any]:
    return _list(project_id, runtime, request, False, query)


@router.get("/servers/detail")
def list_servers_detail(
    project_id: str, token: ScopedDep, runtime: RuntimeDep, request: Request, query: ServerListDep
) -> dict[str, Any]:
    return _list(project_id, runtime, request, True, query)


@router.get("/servers/{server_id}")
def show_server(
    project_id: str, server_id: str, token: ScopedDep, runtime: RuntimeDep, request: Request
) -> dict[str, Any]:
    shown = servers.show_server(runtime, project_id, server_id)
    return {"server": server_view(shown.server, shown.attachments, base_url(runtime, request))}


@router.delete("/servers/{server_id}", status_code=204)
def delete_server(project_id: str, server_id: str, token: ScopedDep, runtime: RuntimeDep) -> Response:
    servers.delete_server(runtime, project_id, server_id)
    return Response(status_code=204)


@router.post("/servers/{server_id}/action", status_code=202)
def server_action(
    project_id: str,
    server_id: str,
    token: ScopedDep,
    runtime: RuntimeDep,
    body: Annotated[dict[str, Any], Body()],
) -> Response:
    if len(body) != 1:
        raise InvalidInput('an action body must have exactly one key, e.g. {"os-stop": null}')
    ((action, args),) = body.items()
    try:
        trigger = ServerTrigger(action)
    except ValueError:
        raise InvalidInput(f"unknown server action {action[:64]!r}; supported: os-start, os-stop") from None
    if args not in (None, {}):
        raise InvalidInput(f'{action} takes no arguments; send {{"{action}": null}}')
    servers.server_action(runtime, project_id, server_id, trigger)
    return Response(status_code=202)


@router.post("/servers/{server_id}/os-volume_attachments")
def attach(
    project_id: str, server_id: str, body: AttachBody, token: ScopedDep, runtime: RuntimeDep
) -> dict[str, Any]:
    spec = body.volumeAttachment
    att = servers.attach_volume(runtime, project_id, server_id, spec.volumeId, spec.device)
    return {"volumeAttachment": attachment_view(att)}


@router.get("/servers/{server_id}/os-volume_attachments")
def list_attachments(
    project_id: str, server_id: str, token: ScopedDep, runtime: RuntimeDep
) -> dict[str, Any]:
    atts = servers.list_attachments(runtime, project_id, server_id)
    return {"volumeAttachments": [attachment_view(a) for a in atts]}


@router.get("/servers/{server_id}/os-volume_attachments/{volume_id}")
def show_attachment(
    project_id: str, server_id: str, volume_id: str, token: ScopedDep, runtime: RuntimeDep
) -> dict[str, Any]:
    att = servers.show_attachment(runtime, project_id, server_id, volume_id)
    return {"volumeAttachment": attachment_view(att)}


@router.delete("/servers/{server_id}/os-volume_attachments/{volume_id}", status_code=202)
def detach(
    project_id: str, server_id: str, volume_id: str, token: ScopedDep, runtime: RuntimeDep
) -> Response:
    servers.detach_volume(runtime, project_id, server_id, volume_id)
    return Response(status_code=202)
