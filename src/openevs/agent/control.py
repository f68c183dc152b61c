"""The agent's small HTTP control API, spoken only by the controller's `HttpAgentClient`.

Every call is idempotent. Errors are `{"error": {"reason", "message"}}`
with a 4xx/5xx status; `reason` is the machine-readable part the
controller acts on (`not_found`, `invalid_input`, `conflict`, `no_space`,
`io_error`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from openevs.agent.interface import VolumeInfo
from openevs.agent.mirror.config import Peer, ReplicationConfig
from openevs.agent.mirror.engine import Role
from openevs.agent.pool import PoolError
from openevs.agent.service import Agent

log = logging.getLogger(__name__)

_STATUS = {
    "not_found": 404,
    "invalid_input": 400,
    "conflict": 409,
    "no_space": 507,
    "io_error": 500,
    "stale_epoch": 409,
}


class SizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size_bytes: StrictInt


class ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volume_id: str
    read_only: StrictBool = False


class PeerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, max_length=255)
    port: StrictInt = Field(ge=1, le=65535)
    export: str = Field(min_length=1, max_length=255)


class ReplicationBody(BaseModel):
    """A volume's replication config (see agent/mirror/manager.py)."""

    model_config = ConfigDict(extra="forbid")
    role: Role
    epoch: StrictInt = Field(ge=0)
    pair_id: str = Field(default="", max_length=128)
    group_id: str | None = Field(default=None, max_length=128)
    peer: PeerBody | None = None
    link_export: str | None = None
    mirroring: StrictBool = True
    initial_sync: StrictBool = False
    add_dirty: list[tuple[StrictInt, StrictInt]] | None = None

    def config(self) -> ReplicationConfig:
        peer = self.peer
        return ReplicationConfig(
            role=self.role,
            epoch=self.epoch,
            pair_id=self.pair_id,
            group_id=self.group_id or None,
            peer=Peer(peer.host, peer.port, peer.export) if peer else None,
            link_export=self.link_export if self.role is Role.SECONDARY else None,
            mirroring=self.mirroring,
        )


def _error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"reason": reason, "message": message}}, status_code=status)


def _volume(info: VolumeInfo) -> dict[str, object]:
    return asdict(info)


def create_control_app(agent: Agent) -> FastAPI:
    app = FastAPI(title=f"openevs agent {agent.az}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(PoolError)
    async def _pool_error(_: Request, exc: PoolError) -> JSONResponse:
        return _error(_STATUS.get(exc.reason, 500), exc.reason, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return _error(400, "invalid_input", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("agent %s: %s %s failed", agent.az, request.method, request.url.path)
        return _error(500, "io_error", f"internal error: {exc}")

    @app.exception_handler(404)
    async def _no_route(_: Request, __: Exception) -> JSONResponse:
        return _error(404, "not_found", "no such path")

    @app.exception_handler(405)
    async def _bad_method(_: Request, __: Exception) -> JSONResponse:
        return _error(405, "invalid_input", "method not allowed")

    @app.get("/health")
    async def health() -> dict[str, object]:
        return asdict(await agent.health())

    @app.get("/volumes")
    async def list_volumes() -> dict[str, object]:
        return {"volumes": [_volume(v) for v in await agent.list_volumes()]}

    @app.get("/volumes/{volume_id}")
    async def get_volume(volume_id: str) -> dict[str, object]:
        return _volume(await agent.get_volume(volume_id))

    @app.put("/volumes/{volume_id}")
    async def create_volume(volume_id: str, body: SizeBody) -> dict[str, object]:
        return _volume(await agent.create_volume(volume_id, body.size_bytes))

    @app.post("/volumes/{volume_id}/grow")
    async def grow_volume(volume_id: str, body: SizeBody) -> dict[str, object]:
        return _volume(await agent.grow_volume(volume_id, body.size_bytes))

    @app.delete("/volumes/{volume_id}", status_code=204)
    async def delete_volume(volume_id: str) -> Response:
        await agent.delete_volume(volume_id)
        return Response(status_code=204)

    @app.get("/exports")
    async def list_exports() -> dict[str, object]:
        return {
            "exports": [
                {"name": n, "volume_id": g.volume_id, "read_only": g.read_only}
                for n, g in agent.list_exports()
            ]
        }

    @app.put("/exports/{name}")
    async def grant_export(name: str, body: ExportBody) -> dict[str, object]:
        grant = await agent.grant_export(name, body.volume_id, body.read_only)
        return {"name": name, "volume_id": grant.volume_id, "read_only": grant.read_only}

    @app.delete("/exports/{name}", status_code=204)
    async def revoke_export(name: str) -> Response:
        await agent.revoke_export(name)
        return Response(status_code=204)

    # -- replication ------------------------------------------------------

    repl = agent.replication

    @app.put("/volumes/{volume_id}/replication")
    async def set_replication(volume_id: str, body: ReplicationBody) -> dict[str, object]:
        return await repl.put(
            volume_id, body.config(), initial_sync=body.initial_sync,
            add_dirty=body.add_dirty or (),
        )  # fmt: skip

    @app.get("/volumes/{volume_id}/replication")
    async def get_replication(volume_id: str) -> dict[str, object]:
        return repl.describe(volume_id)

    @app.get("/replication")
    async def list_replication() -> list[dict[str, object]]:
        """The state of every replicated volume, in one call (the controller's poll)."""
        return [repl.describe(v) for v in sorted(repl.replicas)]

    @app.get("/volumes/{volume_id}/replication/dirty")
    async def get_replication_dirty(volume_id: str) -> list[list[int]]:
        return [[o, n] for o, n in repl.dirty_ranges(volume_id)]

    @app.delete("/volumes/{volume_id}/replication", status_code=204)
    async def delete_replication(volume_id: str) -> Response:
        await repl.delete(volume_id)
        return Response(status_code=204)

    @app.post("/volumes/{volume_id}/replication/pause")
    async def pause_replication(volume_id: str) -> dict[str, object]:
        await repl.set_mirroring([volume_id], False)
        return repl.describe(volume_id)

    @app.post("/volumes/{volume_id}/replication/resume")
    async def resume_replication(volume_id: str) -> dict[str, object]:
        await repl.set_mirroring([volume_id], True)
        return repl.describe(volume_id)

    @app.post("/groups/{group_id}/pause")
    async def pause_group(group_id: str) -> dict[str, object]:
        members = repl.group_members(group_id)
        await repl.set_mirroring(members, False)
        return {"group_id": group_id, "volumes": [repl.describe(v) for v in members]}

    @app.post("/groups/{group_id}/resume")
    async def resume_group(group_id: str) -> dict[str, object]:
        members = repl.group_members(group_id)
        await repl.set_mirroring(members, True)
        return {"group_id": group_id, "volumes": [repl.describe(v) for v in members]}

    return app
