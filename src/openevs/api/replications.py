"""EVS replication pairs: `/v2/{project_id}/os-vendor-replications`.

Field types follow the reference exactly, quirks included: `volume_ids` is
one comma-joined string, `progress` and `fault_level` are strings,
`record_metadata` is a JSON-encoded string.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from openevs.api.auth import RuntimeDep, ScopedDep
from openevs.api.timefmt import evs_time
from openevs.db.models import ReplicationPair
from openevs.services import replications
from openevs.services.listing import parse_page

router = APIRouter(prefix="/v2/{project_id}")


class PairCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr | None = Field(default=None, max_length=1024)
    description: StrictStr | None = Field(default=None, max_length=1024)
    volume_ids: list[StrictStr] = Field(max_length=16)
    priority_station: StrictStr = Field(max_length=255)
    replication_model: StrictStr = Field(max_length=255)


class PairCreateBody(BaseModel):
    replication: PairCreate


def record_metadata(pair: ReplicationPair) -> str:
    return json.dumps(
        {"volume_size": pair.volume_size_gb, "volume_type": pair.volume_type, "multiattach": pair.multiattach}
    )


def pair_view(pair: ReplicationPair) -> dict[str, Any]:
    return {
        "id": pair.id,
        "name": pair.name,
        "description": pair.description,
        "status": pair.status,
        "replication_consistency_group_id": pair.group_id,
        "volume_ids": pair.volume_ids,
        "priority_station": pair.priority_station,
        "created_at": evs_time(pair.created_at),
        "updated_at": evs_time(pair.updated_at),
        "replication_model": pair.replication_model,
        "replication_status": pair.replication_status,
        "progress": pair.progress,
        "failure_detail": pair.failure_detail,
        "record_metadata": record_metadata(pair),
        "fault_level": pair.fault_level,
    }


@router.post("/os-vendor-replications", status_code=202)
def create_pair(project_id: str, body: PairCreateBody, token: ScopedDep, runtime: RuntimeDep) -> JSONResponse:
    spec = body.replication
    new = replications.NewPair(
        volume_ids=list(spec.volume_ids),
        priority_station=spec.priority_station,
        replication_model=spec.replication_model,
        name=spec.name,
        description=spec.description,
    )
    pair = replications.create_pair(runtime, project_id, new)
    return JSONResponse({"replication": pair_view(pair)}, status_code=202)


Q = Annotated[str | None, Query(max_length=1024)]


@router.get("/os-vendor-replications")
@router.get("/os-vendor-replications/detail", include_in_schema=False)
def list_pairs(
    project_id: str,
    token: ScopedDep,
    runtime: RuntimeDep,
    marker: Q = None,
    limit: Q = None,
    offset: Q = None,
    sort_key: Q = None,
    sort_dir: Q = None,
    name: Q = None,
    status: Q = None,
    replication_consistency_group_id: Q = None,
    volume_ids: Q = None,
    volume_id: Q = None,
    priority_station: Q = None,
    changes_since: Annotated[str | None, Query(alias="changes-since", max_length=64)] = None,
) -> dict[str, Any]:
    page = parse_page(limit, marker, offset, sort_key, sort_dir, changes_since, replications.PAIR_SORT_KEYS)
    filters = {
        "name": name,
        "status": status,
        "replication_consistency_group_id": replication_consistency_group_id,
        "volume_ids": volume_ids,
        "volume_id": volume_id,
        "priority_station": priority_station,
    }
    with runtime.db.session() as session:
        rows = replications.list_pairs(session, project_id, page, filters)
    return {"replications": [pair_view(p) for p in rows]}


@router.get("/os-vendor-replications/{replication_id}")
def show_pair(project_id: str, replication_id: str, token: ScopedDep, runtime: RuntimeDep) -> dict[str, Any]:
    return {"replication": pair_view(replications.show_pair(runtime, project_id, replication_id))}


@router.delete("/os-vendor-replications/{replication_id}", status_code=202)
def delete_pair(project_id: str, replication_id: str, token: ScopedDep, runtime: RuntimeDep) -> Response:
    replications.delete_pair(runtime, project_id, replication_id)
    return Response(status_code=202)
