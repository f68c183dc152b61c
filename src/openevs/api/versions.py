"""Version discovery at `/` (300, all versions) and `/v2/` (200), without a token,
in Cinder's shape, so keystoneauth/openstacksdk discovery works unpinned.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from openevs.api.auth import RuntimeDep
from openevs.api.identity import base_url

router = APIRouter()


def v2_entry(url: str) -> dict[str, Any]:
    return {
        "id": "v2.0",
        "status": "SUPPORTED",
        "updated": "2014-06-28T12:20:21Z",
        "min_version": "",
        "version": "",
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.volume+json;version=2"}
        ],
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            {"rel": "self", "href": f"{url}/v2/"},
        ],
    }


@router.get("/")
def all_versions(runtime: RuntimeDep, request: Request) -> JSONResponse:
    return JSONResponse({"versions": [v2_entry(base_url(runtime, request))]}, status_code=300)


@router.get("/v2")
@router.get("/v2/", include_in_schema=False)
def v2_version(runtime: RuntimeDep, request: Request) -> dict[str, Any]:
    return {"versions": [v2_entry(base_url(runtime, request))]}
