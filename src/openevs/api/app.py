"""create_app(): the HTTP API (EVS v2, Cinder v2, Nova subset, Keystone v3)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from openevs.api import drills, groups, identity, replications, servers, snapshots, versions, volumes
from openevs.api.errors import fault, install_error_handlers
from openevs.api.metrics import HttpMetrics
from openevs.api.text_guard import refuse_unstorable_text
from openevs.runtime import Runtime

MAX_HEADER_BYTES = 16 * 1024


class BodyLimit(BaseHTTPMiddleware):
    """Refuse oversized bodies and headers before anything parses them."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        super().__init__(app)
        self.max_body_bytes = max_body_bytes

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        header_bytes = sum(len(k) + len(v) for k, v in request.headers.raw)
        if header_bytes > MAX_HEADER_BYTES:
            return fault(400, f"request headers exceed {MAX_HEADER_BYTES} bytes")
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return fault(400, "Content-Length must be a number")
            if int(length) > self.max_body_bytes:
                return fault(413, f"request body exceeds {self.max_body_bytes} bytes; send less")
        elif request.method in ("POST", "PUT", "PATCH"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.max_body_bytes:
                    return fault(413, f"request body exceeds {self.max_body_bytes} bytes; send less")
            request._body = body  # noqa: SLF001 - replay the consumed stream
        return await call_next(request)


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="openevs",
        version="0.1.0",
        description="Elastic Volume Service with cross-AZ replication (EVS v2 API).",
        docs_url="/docs",
        redoc_url=None,
        dependencies=[Depends(refuse_unstorable_text)],
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_body_bytes=runtime.settings.max_body_bytes)
    app.include_router(versions.router)
    app.include_router(identity.router)
    app.include_router(volumes.router)
    app.include_router(servers.router)
    app.include_router(replications.router)
    app.include_router(groups.router)
    app.include_router(drills.router)
    app.include_router(snapshots.router)
    app.include_router(snapshots.v3_router)
    app.add_middleware(HttpMetrics, metrics=runtime.metrics)  # outermost: sees every answer
    return app
