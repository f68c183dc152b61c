"""DR drills of a consistency group, an openevs extension (docs/decisions.md "DR drills"):
`/v2/{project_id}/os-vendor-replication-consistency-groups/{group_id}/drill`.

POST starts one (202), GET shows it, DELETE cleans it up (202: its disks,
then its snapshots, then the drill; afterwards GET answers 404).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictBool

from openevs.api.auth import RuntimeDep, ScopedDep
from openevs.api.groups import BASE
from openevs.api.timefmt import evs_time
from openevs.api.volumes import _parse
from openevs.services import drills

router = APIRouter(prefix="/v2/{project_id}")
PATH = BASE + "/{group_id}/drill"


class DrillCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    create_disks: StrictBool = False


class DrillCreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drill: DrillCreate


def drill_view(shown: drills.DrillDetail) -> dict[str, Any]:
    d = shown.drill
    return {
        "id": d.id,
        "replication_consistency_group_id": d.group_id,
        "status": d.status,
        "availability_zone": d.availability_zone,
        "create_disks": d.create_disks,
        "taken_at": evs_time(d.taken_at),
        "created_at": evs_time(d.created_at),
        "updated_at": evs_time(d.updated_at),
        "fault": d.fault,
        "members": [
            {
                "replication_id": m.replication_id,
                "dr_volume_id": m.dr_volume_id,
                "snapshot_id": m.snapshot.id if m.snapshot else None,
                "snapshot_status": m.snapshot.status if m.snapshot else None,
                "volume_id": m.disk.id if m.disk else None,
                "volume_status": m.disk.status if m.disk else None,
            }
            for m in shown.members
        ],
    }


@router.post(PATH, status_code=202)
def start_drill(
    project_id: str, group_id: str, token: ScopedDep, runtime: RuntimeDep,
    body: Annotated[Any, Body()] = None,
) -> JSONResponse:  # fmt: skip
    """Snapshot every DR disk of the group at one instant; `create_disks`: a disk of each in the DR AZ."""
    spec = _parse(DrillCreateBody, body, "").drill if body is not None else DrillCreate()
    shown = drills.start_drill(runtime, project_id, token.user_id, group_id, spec.create_disks)
    return JSONResponse({"drill": drill_view(shown)}, status_code=202)


@router.get(PATH)
def show_drill(project_id: str, group_id: str, token: ScopedDep, runtime: RuntimeDep) -> dict[str, Any]:
    return {"drill": drill_view(drills.show_drill(runtime, project_id, group_id))}


@router.delete(PATH, status_code=202)
def cleanup_drill(project_id: str, group_id: str, token: ScopedDep, runtime: RuntimeDep) -> Response:
    drills.cleanup_drill(runtime, project_id, group_id)
    return Response(status_code=202)
