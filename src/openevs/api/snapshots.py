"""Cinder v2 snapshot routes as EVS documents them: snapshots, /detail, metadata."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from openevs.api.auth import RuntimeDep, ScopedDep
from openevs.api.identity import base_url
from openevs.api.list_query import ListQuery, Text
from openevs.api.timefmt import evs_time
from openevs.db.models import Snapshot
from openevs.domain import codes
from openevs.domain.errors import InvalidInput, NotFound
from openevs.services import snapshots

router = APIRouter(prefix="/v2/{project_id}")
# The one v3 route EVS documents for snapshots (docs/decisions.md "Snapshots").
v3_router = APIRouter(prefix="/v3/{project_id}")


class SnapshotCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    volume_id: str = Field(max_length=64)
    force: bool = False
    name: str | None = Field(default=None, max_length=1024)
    description: str | None = Field(default=None, max_length=1024)
    display_name: str | None = Field(default=None, max_length=1024)
    display_description: str | None = Field(default=None, max_length=1024)
    metadata: dict[str, Any] | None = None


class SnapshotCreateBody(BaseModel):
    snapshot: SnapshotCreate


class SnapshotUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=1024)
    description: str | None = Field(default=None, max_length=1024)
    display_name: str | None = Field(default=None, max_length=1024)
    display_description: str | None = Field(default=None, max_length=1024)


class SnapshotUpdateBody(BaseModel):
    snapshot: SnapshotUpdate


class MetadataBody(BaseModel):
    metadata: dict[str, Any]


class MetaBody(BaseModel):
    meta: dict[str, Any]


def snapshot_view(s: Snapshot, detail: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": s.id,
        "status": s.status,
        "name": s.name,
        "description": s.description,
        "created_at": evs_time(s.created_at),
        "updated_at": evs_time(s.updated_at),
        "metadata": s.metadata_ or {},
        "volume_id": s.volume_id,
        "size": s.size_gb,
    }
    if detail:
        view["os-extended-snapshot-attributes:progress"] = s.progress
        view["os-extended-snapshot-attributes:project_id"] = s.project_id
    return view


@router.post("/snapshots", status_code=202)
def create_snapshot(
    project_id: str, body: SnapshotCreateBody, token: ScopedDep, runtime: RuntimeDep
) -> JSONResponse:
    spec = body.snapshot
    new = snapshots.NewSnapshot(
        volume_id=spec.volume_id,
        force=spec.force,
        name=spec.name if spec.name is not None else spec.display_name,
        description=spec.description if spec.description is not None else spec.display_description,
        metadata=spec.metadata,
    )
    return JSONResponse({"snapshot": snapshot_view(snapshots.create_snapshot(runtime, project_id, new))}, 202)


class SnapshotListQuery(ListQuery):
    """Query of GET /snapshots and /snapshots/detail: paging with offset and four filters."""

    FILTERS = ("name", "status", "volume_id", "availability_zone")
    offset: Text = None
    sort: Text = None
    name: Text = None
    status: Text = None
    volume_id: Text = None
    availability_zone: Text = None

    @property
    def paging_offset(self) -> str | None:
        return self.offset

    @property
    def paging_sort_key(self) -> str | None:
        key = self.sort_key or self.sort
        return "size_gb" if key == "size" else key


SnapshotListDep = Annotated[SnapshotListQuery, Query()]


def _list(project_id: str, runtime: RuntimeDep, request: Request, detail: bool,
          query: SnapshotListQuery) -> dict[str, Any]:  # fmt: skip
    page = query.page(snapshots.SNAPSHOT_SORT_KEYS)
    with runtime.db.session() as session:
        rows = snapshots.list_snapshots(session, project_id, page, query.filters())
    result: dict[str, Any] = {"snapshots": [snapshot_view(s, detail) for s in rows]}
    if query.limit and rows and len(rows) == page.limit:
        url = base_url(runtime, request)
        path = "snapshots/detail" if detail else "snapshots"
        result["snapshots_links"] = [
            {"rel": "next", "href": f"{url}/v2/{project_id}/{path}?limit={page.limit}&marker={rows[-1].id}"}
        ]
    return result


@router.get("/snapshots")
def list_snapshots(
    project_id: str, token: ScopedDep, runtime: RuntimeDep, request: Request, query: SnapshotListDep
) -> dict[str, Any]:
    return _list(project_id, runtime, request, False, query)


@router.get("/snapshots/detail")
def list_snapshots_detail(
    project_id: str, token: ScopedDep, runtime: RuntimeDep, request: Request, query: SnapshotListDep
) -> dict[str, Any]:
    return _list(project_id, runtime, request, True, query)


@router.get("/snapshots/{snapshot_id}")
def show_snapshot(project_id: str, snapshot_id: str, token: ScopedDep, runtime: RuntimeDep) -> dict[str, Any]:
    return {"snapshot": snapshot_view(snapshots.show_snapshot(runtime, project_id, snapshot_id))}


@router.put("/snapshots/{snapshot_id}")
def update_snapshot(
    project_id: str, snapshot_id: str, body: SnapshotUpdateBody, token: ScopedDep, runtime: RuntimeDep
) -> dict[str, Any]:
    spec = body.snapshot
    snapshot = snapshots.update_snapshot(
        runtime, project_id, snapshot_id,
        spec.name if spec.name is not None else spec.display_name,
        spec.description if spec.description is not None else spec.display_description,
    )  # fmt: skip
    return {"snapshot": snapshot_view(snapshot)}


@router.delete("/snapshots/{snapshot_id}", status_code=202)
def delete_snapshot(project_id: str, snapshot_id: str, token: ScopedDep, runtime: RuntimeDep) -> Response:
    snapshots.delete_snapshot(runtime, project_id, snapshot_id)
    return Response(status_code=202)


# -- metadata ----------------------------------------------------------------------


@router.get("/snapshots/{snapshot_id}/metadata")
def get_metadata(project_id: str, snapshot_id: str, token: ScopedDep, runtime: RuntimeDep) -> dict[str, Any]:
    return {"metadata": snapshots.snapshot_metadata(runtime, project_id, snapshot_id)}


@router.post("/snapshots/{snapshot_id}/metadata")
def add_metadata(
    project_id: str, snapshot_id: str, body: MetadataBody, token: ScopedDep, runtime: RuntimeDep
) -> dict[str, Any]:
    return {"metadata": snapshots.snapshot_metadata(runtime, project_id, snapshot_id, merge=body.metadata)}


@router.put("/snapshots/{snapshot_id}/metadata")
def replace_metadata(
    project_id: str, snapshot_id: str, body: MetadataBody, token: ScopedDep, runtime: RuntimeDep
) -> dict[str, Any]:
    return {"metadata": snapshots.snapshot_metadata(runtime, project_id, snapshot_id, replace=body.metadata)}


@router.get("/snapshots/{snapshot_id}/metadata/{key}")
def get_meta(
    project_id: str, snapshot_id: str, key: str, token: ScopedDep, runtime: RuntimeDep
) -> dict[str, Any]:
    metadata = snapshots.snapshot_metadata(runtime, project_id, snapshot_id)
    if key not in metadata:
        raise NotFound(f"metadata key {key[:64]!r} not found", code=codes.NOT_FOUND)
    return {"meta": {key: metadata[key]}}


@router.put("/snapshots/{snapshot_id}/metadata/{key}")
def set_meta(
    project_id: str, snapshot_id: str, key: str, body: MetaBody, token: ScopedDep, runtime: RuntimeDep
) -> dict[str, Any]:
    if list(body.meta) != [key]:
        raise InvalidInput(
            f"the body must be {{\"meta\": {{\"{key[:64]}\": VALUE}}}}: one key, the one in the URL",
            code=codes.MALFORMED_REQUEST,
        )
    metadata = snapshots.snapshot_metadata(runtime, project_id, snapshot_id, merge=body.meta)
    return {"meta": {key: metadata[key]}}


@router.delete("/snapshots/{snapshot_id}/metadata/{key}")
def delete_meta(
    project_id: str, snapshot_id: str, key: str, token: ScopedDep, runtime: RuntimeDep
) -> Response:
    snapshots.snapshot_metadata(runtime, project_id, snapshot_id, drop=key)
    return Response(status_code=200)


class RollbackArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volume_id: str = Field(max_length=64)
    name: str | None = Field(default=None, max_length=255)


class RollbackBody(BaseModel):
    rollback: RollbackArgs


@v3_router.post("/os-vendor-snapshots/{snapshot_id}/rollback", status_code=202)
def rollback_snapshot(
    project_id: str, snapshot_id: str, body: RollbackBody, token: ScopedDep, runtime: RuntimeDep
) -> JSONResponse:
    snapshots.rollback_snapshot(runtime, project_id, snapshot_id, body.rollback.volume_id)
    return JSONResponse({"rollback": {"volume_id": body.rollback.volume_id}}, 202)
