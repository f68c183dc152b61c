"""Replication consistency groups: `/v2/{project_id}/os-vendor-replication-consistency-groups`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from openevs.api.auth import RuntimeDep, ScopedDep
from openevs.api.list_query import LongListQuery, LongText, listed
from openevs.api.timefmt import evs_time
from openevs.api.volumes import _parse
from openevs.db.models import ReplicationGroup
from openevs.domain import codes
from openevs.domain.errors import InvalidInput
from openevs.domain.measurement import GroupResync
from openevs.runtime import Runtime
from openevs.services import group_actions, groups, verify
from openevs.services.arbitration import FORCE_ACTION

router = APIRouter(prefix="/v2/{project_id}")
BASE = "/os-vendor-replication-consistency-groups"


class GroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr | None = Field(default=None, max_length=1024)
    description: StrictStr | None = Field(default=None, max_length=1024)
    replication_ids: list[StrictStr] = Field(max_length=1000)
    priority_station: StrictStr = Field(max_length=255)
    replication_model: StrictStr = Field(max_length=255)


class GroupCreateBody(BaseModel):
    replication_consistency_group: GroupCreate


class GroupUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr | None = Field(default=None, max_length=1024)
    description: StrictStr | None = Field(default=None, max_length=1024)
    replication_model: StrictStr | None = Field(default=None, max_length=255)
    add_replication_ids: list[StrictStr] = Field(default_factory=list, max_length=1000)
    remove_replication_ids: list[StrictStr] = Field(default_factory=list, max_length=1000)


class GroupUpdateBody(BaseModel):
    replication_consistency_group: GroupUpdate


class ExtendItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr = Field(max_length=64)
    new_size: StrictInt


class ExtendMany(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replications: list[ExtendItem] = Field(min_length=1, max_length=1000)


def group_view(
    group: ReplicationGroup, replication_ids: list[str], arbitration: dict[str, Any] | None = None,
    resync: GroupResync | None = None,
) -> dict[str, Any]:  # fmt: skip
    resync = resync or GroupResync(0, 0.0, None)
    return {
        "id": group.id,
        "name": group.name,
        "description": group.description,
        "status": group.status,
        "priority_station": group.priority_station,
        "replication_model": group.replication_model,
        "replication_status": group.replication_status,
        # Not in the reference's field list; like a pair's progress ("0".."100" while
        # copying): the members' average, which `openevs group sync --wait` draws.
        "progress": group.progress,
        "replication_ids": replication_ids,
        "created_at": evs_time(group.created_at),
        "updated_at": evs_time(group.updated_at),
        "failure_detail": group.failure_detail,
        "fault_level": group.fault_level,
        # An openevs extension (docs/decisions.md "Arbitration"): the group's witness and
        # whether its primaries' I/O is suspended; null under static priority.
        "arbitration": arbitration,
        # openevs extensions (docs/monitoring.md): the members' resync rolled up, as the
        # production agents last measured it (dirty and rate summed, the slowest ETA)
        "dirty_bytes": resync.dirty_bytes,
        "resync_rate_bytes_per_s": resync.resync_rate_bytes_per_s,
        "resync_eta_s": resync.resync_eta_s,
    }


def _body(shown: groups.GroupDetail) -> dict[str, Any]:
    view = group_view(shown.group, shown.replication_ids, shown.arbitration, shown.resync)
    return {"replication_consistency_group": view}


@router.post(BASE, status_code=202)
def create_group(
    project_id: str, body: GroupCreateBody, token: ScopedDep, runtime: RuntimeDep
) -> JSONResponse:
    spec = body.replication_consistency_group
    new = groups.NewGroup(
        replication_ids=list(spec.replication_ids),
        priority_station=spec.priority_station,
        replication_model=spec.replication_model,
        name=spec.name,
        description=spec.description,
    )
    return JSONResponse(_body(groups.create_group(runtime, project_id, new)), status_code=202)


class GroupListQuery(LongListQuery):
    """Query of GET /os-vendor-replication-consistency-groups: paging and the documented filters."""

    FILTERS = ("name", "status", "priority_station", "volume_id")
    name: LongText = None
    status: LongText = None
    priority_station: LongText = None
    volume_id: LongText = None


@router.get(BASE)
@router.get(BASE + "/detail", include_in_schema=False)
def list_groups(
    project_id: str, token: ScopedDep, runtime: RuntimeDep, query: Annotated[GroupListQuery, Query()]
) -> JSONResponse:
    page = query.page(groups.GROUP_SORT_KEYS)
    with runtime.db.session() as session:
        rows = groups.list_groups(session, project_id, page, query.filters())
        members = groups.members_views(session, [g.id for g in rows])
    return listed({"replication_consistency_groups": [group_view(g, *members[g.id]) for g in rows]})


@router.get(BASE + "/{group_id}")
def show_group(project_id: str, group_id: str, token: ScopedDep, runtime: RuntimeDep) -> dict[str, Any]:
    return _body(groups.show_group(runtime, project_id, group_id))


@router.put(BASE + "/{group_id}", status_code=202)
def update_group(
    project_id: str, group_id: str, body: GroupUpdateBody, token: ScopedDep, runtime: RuntimeDep
) -> JSONResponse:
    spec = body.replication_consistency_group
    shown = groups.update_group(
        runtime,
        project_id,
        group_id,
        spec.name,
        spec.description,
        spec.replication_model,
        list(spec.add_replication_ids),
        list(spec.remove_replication_ids),
    )
    return JSONResponse(_body(shown), status_code=202)


@router.delete(BASE + "/{group_id}", status_code=202)
def delete_group(project_id: str, group_id: str, token: ScopedDep, runtime: RuntimeDep) -> Response:
    groups.delete_group(runtime, project_id, group_id)
    return Response(status_code=202)


@router.post(BASE + "/{group_id}/verify", status_code=202)
def verify_group(project_id: str, group_id: str, token: ScopedDep, runtime: RuntimeDep) -> JSONResponse:
    """openevs extension: verify every member pair (each pair view shows its `verify`)."""
    verify.verify_group(runtime, project_id, group_id)
    return JSONResponse(_body(groups.show_group(runtime, project_id, group_id)), status_code=202)


# The actions without arguments, each one use case.
NULL_ACTIONS: dict[str, Callable[[Runtime, str, str], None]] = {
    "os-stop-replication-consistency-group": group_actions.pause_group,
    "os-sync-replication-consistency-group": group_actions.sync_group,
    "os-failover-replication-consistency-group": groups.failover_group,
    "os-reverse-replication-consistency-group": groups.reverse_group,
    "os-reprotect-replication-consistency-group": groups.reprotect_group,
    # An openevs extension (docs/decisions.md "Arbitration"): failover overriding the witness.
    FORCE_ACTION: groups.force_failover_group,
}
EXTEND = "os-extend-replication-volumes"


def _extend_sizes(args: Any) -> list[tuple[str, int]]:
    if isinstance(args, dict) and "replications" in args:
        many = _parse(ExtendMany, args, EXTEND)
        return [(item.id, item.new_size) for item in many.replications]
    one = _parse(ExtendItem, args, EXTEND)
    return [(one.id, one.new_size)]


@router.post(BASE + "/{group_id}/action")
def group_action(
    project_id: str,
    group_id: str,
    token: ScopedDep,
    runtime: RuntimeDep,
    body: Annotated[dict[str, Any], Body()],
) -> Response:
    if len(body) != 1:
        raise InvalidInput(
            'an action body must have exactly one key, e.g. {"os-sync-replication-consistency-group": null}',
            code=codes.MALFORMED_REQUEST,
        )
    ((action, args),) = body.items()
    if action in NULL_ACTIONS and args not in (None, {}):
        raise InvalidInput(
            f'{action} takes no arguments; send {{"{action}": null}}', code=codes.MALFORMED_REQUEST
        )
    if action in NULL_ACTIONS:
        NULL_ACTIONS[action](runtime, project_id, group_id)
    elif action == EXTEND:
        group_actions.extend_group(runtime, project_id, group_id, _extend_sizes(args))
    else:
        raise InvalidInput(
            f"unknown action {action[:64]!r}; supported: {', '.join(sorted([*NULL_ACTIONS, EXTEND]))}",
            code=codes.MALFORMED_REQUEST,
        )
    return Response(status_code=200)
