"""EVS replication pairs: `/v2/{project_id}/os-vendor-replications`.

Field types follow the reference exactly, quirks included: `volume_ids` is
one comma-joined string, `progress` and `fault_level` are strings,
`record_metadata` is a JSON-encoded string.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from openevs.api.auth import RuntimeDep, ScopedDep
from openevs.api.list_query import LongListQuery, LongText, listed
from openevs.api.timefmt import evs_time
from openevs.db.models import ReplicationPair
from openevs.domain.arbitration import arbitration_view
from openevs.domain.verify import VerifyRun
from openevs.services import replications, verify

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
    return _record_metadata(pair.volume_size_gb, pair.volume_type, pair.multiattach)


@functools.lru_cache(maxsize=256, typed=True)  # a few sizes and types: one encoding each, not one per row
def _record_metadata(volume_size_gb: int, volume_type: str, multiattach: bool) -> str:
    return json.dumps({"volume_size": volume_size_gb, "volume_type": volume_type, "multiattach": multiattach})


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
        # An openevs extension (docs/decisions.md "Arbitration"): the witness and whether
        # the primary's I/O is suspended; null under static priority.
        "arbitration": arbitration_view([pair.arbitration]),
        # openevs extension (docs/monitoring.md): the last online verify, if any
        "verify": VerifyRun.load(pair.verify).view() if pair.verify else None,
        # openevs extensions: the resync as the production agent last measured it, and its limit
        "dirty_bytes": pair.dirty_bytes or 0,
        "resync_rate_bytes_per_s": pair.resync_rate_bytes_per_s or 0.0,
        "resync_eta_s": pair.resync_eta_s,
        "resync_rate_limit_bytes_per_s": pair.resync_rate_limit_bytes_per_s or 0,
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


class PairListQuery(LongListQuery):
    """Query of GET /os-vendor-replications: paging and the documented filters."""

    FILTERS = (
        "name", "status", "replication_consistency_group_id", "volume_ids", "volume_id", "priority_station",
    )
    name: LongText = None
    status: LongText = None
    replication_consistency_group_id: LongText = None
    volume_ids: LongText = None
    volume_id: LongText = None
    priority_station: LongText = None


@router.get("/os-vendor-replications")
@router.get("/os-vendor-replications/detail", include_in_schema=False)
def list_pairs(
    project_id: str, token: ScopedDep, runtime: RuntimeDep, query: Annotated[PairListQuery, Query()]
) -> JSONResponse:
    page = query.page(replications.PAIR_SORT_KEYS)
    with runtime.db.session() as session:
        rows = replications.list_pairs(session, project_id, page, query.filters())
    return listed({"replications": [pair_view(p) for p in rows]})


@router.get("/os-vendor-replications/{replication_id}")
def show_pair(project_id: str, replication_id: str, token: ScopedDep, runtime: RuntimeDep) -> dict[str, Any]:
    return {"replication": pair_view(replications.show_pair(runtime, project_id, replication_id))}


@router.post("/os-vendor-replications/{replication_id}/verify", status_code=202)
def verify_pair(project_id: str, replication_id: str, token: ScopedDep, runtime: RuntimeDep) -> JSONResponse:
    """openevs extension: compare the DR disk with the production disk while writes go on."""
    pair = verify.verify_pair(runtime, project_id, replication_id)
    return JSONResponse({"replication": pair_view(pair)}, status_code=202)


class ResyncRateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resync_rate_bytes_per_s: int = Field(ge=0, le=1 << 40)


@router.put("/os-vendor-replications/{replication_id}/resync-rate")
def set_resync_rate(
    project_id: str, replication_id: str, body: ResyncRateBody, token: ScopedDep, runtime: RuntimeDep
) -> dict[str, Any]:
    """openevs extension: this pair's resync limit in bytes/s (0: only the agent's own)."""
    pair = verify.set_resync_rate(runtime, project_id, replication_id, body.resync_rate_bytes_per_s)
    return {"replication": pair_view(pair)}


@router.delete("/os-vendor-replications/{replication_id}", status_code=202)
def delete_pair(project_id: str, replication_id: str, token: ScopedDep, runtime: RuntimeDep) -> Response:
    replications.delete_pair(runtime, project_id, replication_id)
    return Response(status_code=202)
