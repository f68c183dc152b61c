"""The one place that maps errors to OpenStack fault bodies.

`{"badRequest": {"code": 400, "message": "...", "error_code": "EVS.1020"}}`;
`error_code` only where the reference documents one. No input yields a 5xx:
anything unexpected is logged with the request path and answered 500 only
as a last resort (which the fuzz tests treat as a bug).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from openevs.domain import codes
from openevs.domain.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidState,
    NotFound,
    OpenEvsError,
    QuotaExceeded,
    ServiceUnavailable,
    Unauthorized,
)

log = logging.getLogger(__name__)

FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    406: "notAcceptable",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    422: "badRequest",
    500: "computeFault",
    503: "serviceUnavailable",
}

_STATUS_BY_ERROR: list[tuple[type[OpenEvsError], int]] = [
    (InvalidInput, 400),
    (InvalidState, 400),
    (NotFound, 404),
    (Conflict, 409),
    (QuotaExceeded, 413),
    (Unauthorized, 401),
    (Forbidden, 403),
    (ServiceUnavailable, 503),
]


def fault(status: int, message: str, code: str | None = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"code": status, "message": message}
    if code:
        body["error_code"] = code
    name = FAULT_NAMES.get(status, "badRequest" if status < 500 else "computeFault")
    hdrs = dict(headers)
    if status == 401:
        hdrs.setdefault("WWW-Authenticate", 'Keystone uri="/v3"')
    return JSONResponse({name: body}, status_code=status, headers=hdrs)


def status_for(exc: OpenEvsError) -> int:
    for kind, status in _STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return status
    return 500


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        where = ".".join(loc) or "request body"
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON; send a JSON object"
        msg = err.get("msg", "is invalid")
        if err.get("type") == "missing":
            msg = "is required"
        elif err.get("type") == "extra_forbidden":
            msg = "is not an allowed key here"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenEvsError)
    async def _domain(request: Request, exc: OpenEvsError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return fault(status, exc.message, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return fault(400, _describe_validation(exc), codes.MALFORMED_REQUEST)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = str(exc.detail) if exc.detail else "request failed"
        if status == 404 and message == "Not Found":
            message = f"no such resource: {request.url.path}"
        if status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        headers = dict(exc.headers or {})
        return fault(status, message, **headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return fault(500, "internal error; the operator's log has details", codes.INTERNAL)
