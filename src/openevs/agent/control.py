"""The agent's small HTTP control API, spoken only by the controller's `HttpAgentClient`.

Every body, answer and error is a model of `openevs.contract`; every call
is idempotent. Errors are `ErrorBody` (`{"error": {"reason", "message"}}`)
with the status of their `ErrorReason`; the reason is what the controller
acts on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from openevs.agent.metrics import metrics_router
from openevs.agent.node import StorageNode
from openevs.agent.pool import PoolError
from openevs.agent.resources import SHORTAGE_LOG, shortage_of
from openevs.agent.snapshot_control import add_snapshot_routes
from openevs.agent.verify import verify_router
from openevs.contract import (
    AgentHealth,
    DirtyRanges,
    ErrorBody,
    ErrorDetail,
    ErrorReason,
    Export,
    ExportGrant,
    ExportList,
    ReplicationBatch,
    ReplicationRequest,
    ReplicationState,
    ReplicationStates,
    SizeRequest,
    VolumeInfo,
    VolumeList,
)

log = logging.getLogger(__name__)


def _error(reason: ErrorReason, message: str, status: int = 0) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(reason=reason, message=message))
    return JSONResponse(body.model_dump(mode="json"), status_code=status or reason.http_status)


def _validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors]
    return "; ".join(parts) or "invalid request"


def create_control_app(agent: StorageNode) -> FastAPI:
    app = FastAPI(title=f"openevs agent {agent.az}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(PoolError)
    async def _pool_error(request: Request, exc: PoolError) -> JSONResponse:
        cause = exc.__cause__
        what = shortage_of(cause) if cause is not None else None
        if what is not None and exc.reason is ErrorReason.IO_ERROR:  # the pool is fine, the agent is short
            assert cause is not None
            SHORTAGE_LOG.report(what, f"{request.method} {request.url.path}", cause)
            message = f"agent {agent.az} is short of {what}: {exc.message}"
            return _error(ErrorReason.RESOURCE_SHORTAGE, message)
        return _error(exc.reason, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(ErrorReason.INVALID_INPUT, _validation_message(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _invalid_value(_: Request, exc: ValidationError) -> JSONResponse:
        return _error(ErrorReason.INVALID_INPUT, _validation_message(list(exc.errors())))

    async def _os_error(request: Request, exc: Exception) -> JSONResponse:
        what = shortage_of(exc)
        if what is not None:  # it says so, logged once per interval, and the next try may work
            SHORTAGE_LOG.report(what, f"{request.method} {request.url.path}", exc)
            return _error(ErrorReason.RESOURCE_SHORTAGE, f"agent {agent.az} is short of {what}: {exc}")
        return await _unexpected(request, exc)

    # Not under Exception: starlette logs a traceback for whatever reaches that handler.
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(MemoryError, _os_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("agent %s: %s %s failed", agent.az, request.method, request.url.path)
        return _error(ErrorReason.IO_ERROR, f"internal error: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that does not parse, ...) in the contract's shape
        return _error(ErrorReason.INVALID_INPUT, str(exc.detail)[:200], status=exc.status_code)

    @app.exception_handler(404)
    async def _no_route(_: Request, __: Exception) -> JSONResponse:
        return _error(ErrorReason.NOT_FOUND, "no such path")

    @app.exception_handler(405)
    async def _bad_method(_: Request, __: Exception) -> JSONResponse:
        return _error(ErrorReason.INVALID_INPUT, "method not allowed", status=405)

    app.include_router(metrics_router(agent))  # GET /metrics (Prometheus text, not a contract model)
    app.include_router(verify_router(agent))  # online verify: hash, changes, dirty

    @app.get("/health")
    async def health() -> AgentHealth:
        return await agent.health()

    @app.get("/volumes")
    async def list_volumes() -> VolumeList:
        return VolumeList(volumes=await agent.list_volumes())

    @app.get("/volumes/{volume_id}")
    async def get_volume(volume_id: str) -> VolumeInfo:
        return await agent.get_volume(volume_id)

    @app.put("/volumes/{volume_id}")
    async def create_volume(volume_id: str, body: SizeRequest) -> VolumeInfo:
        return await agent.create_volume(volume_id, body.size_bytes)

    @app.post("/volumes/{volume_id}/grow")
    async def grow_volume(volume_id: str, body: SizeRequest) -> VolumeInfo:
        return await agent.grow_volume(volume_id, body.size_bytes)

    @app.delete("/volumes/{volume_id}", status_code=204)
    async def delete_volume(volume_id: str) -> Response:
        await agent.delete_volume(volume_id)
        return Response(status_code=204)

    @app.get("/exports")
    async def list_exports() -> ExportList:
        return ExportList(
            exports=[
                Export(name=n, volume_id=g.volume_id, read_only=g.read_only) for n, g in agent.list_exports()
            ]
        )

    @app.put("/exports/{name}")
    async def grant_export(name: str, body: ExportGrant) -> Export:
        grant = await agent.grant_export(name, body.volume_id, body.read_only)
        return Export(name=name, volume_id=grant.volume_id, read_only=grant.read_only)

    @app.delete("/exports/{name}", status_code=204)
    async def revoke_export(name: str) -> Response:
        await agent.revoke_export(name)
        return Response(status_code=204)

    # -- replication ------------------------------------------------------

    repl = agent.replication

    @app.put("/volumes/{volume_id}/replication")
    async def set_replication(volume_id: str, body: ReplicationRequest) -> ReplicationState:
        return await repl.put(volume_id, body)

    @app.post("/replication/batch")
    async def set_replication_batch(body: ReplicationBatch) -> ReplicationStates:
        """Many PUT /volumes/{id}/replication in one call (a group's failover promotes),
        saved as one group commit (ReplicationManager.put_many)."""
        states = await repl.put_many([(item.volume_id, item.request) for item in body.items])
        return ReplicationStates(volumes=states, version=repl.changes.version, boot_id=agent.boot_id)

    @app.get("/volumes/{volume_id}/replication")
    async def get_replication(volume_id: str) -> ReplicationState:
        return repl.describe(volume_id)

    @app.get("/replication")
    async def list_replication(since: int | None = None) -> ReplicationStates:
        """The state of every replicated volume in one call (the controller's measurement),
        or with `since` only of those changed after that version (mirror/changes.py)."""
        version = repl.changes.version
        changed_only = since is not None and 0 <= since <= version
        if changed_only:
            assert since is not None
            ids = [v for v in repl.changes.changed_since(since) if v in repl.replicas]
        else:
            ids = sorted(repl.replicas)
        return ReplicationStates(
            volumes=[repl.describe(v) for v in ids], version=version, boot_id=agent.boot_id,
            changed_only=changed_only,
        )  # fmt: skip

    @app.get("/volumes/{volume_id}/replication/dirty")
    async def get_replication_dirty(volume_id: str) -> DirtyRanges:
        return DirtyRanges(ranges=repl.dirty_ranges(volume_id))

    @app.delete("/volumes/{volume_id}/replication", status_code=204)
    async def delete_replication(volume_id: str) -> Response:
        await repl.delete(volume_id)
        return Response(status_code=204)

    @app.post("/volumes/{volume_id}/replication/pause")
    async def pause_replication(volume_id: str) -> ReplicationState:
        await repl.set_mirroring([volume_id], False)
        return repl.describe(volume_id)

    @app.post("/volumes/{volume_id}/replication/resume")
    async def resume_replication(volume_id: str) -> ReplicationState:
        await repl.set_mirroring([volume_id], True)
        return repl.describe(volume_id)

    @app.post("/groups/{group_id}/pause")
    async def pause_group(group_id: str) -> ReplicationStates:
        members = repl.group_members(group_id)
        await repl.set_mirroring(members, False)
        return ReplicationStates(volumes=[repl.describe(v) for v in members])

    @app.post("/groups/{group_id}/resume")
    async def resume_group(group_id: str) -> ReplicationStates:
        members = repl.group_members(group_id)
        await repl.set_mirroring(members, True)
        return ReplicationStates(volumes=[repl.describe(v) for v in members])

    add_snapshot_routes(app, agent)
    return app
