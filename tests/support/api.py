"""API calls every scenario starts with, for any client that sends a project's
token and fills `{p}` in paths with its project id (the integration tests'
`Api`, the e2e and fault tests' `Session`)."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from tests.support.waiting import wait_for

GROUPS = "/v2/{p}/os-vendor-replication-consistency-groups"


class Client(Protocol):
    def get(self, path: str, **kw: Any) -> httpx.Response: ...

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response: ...


def get_json(client: Client, path: str, key: str) -> dict[str, Any]:
    r = client.get(path)
    assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
    return dict(r.json()[key])


def wait_json(
    client: Client, path: str, key: str, pred: Any, timeout_s: float = 60, what: str = ""
) -> dict[str, Any]:
    """GET `path` until `pred` holds for its `key` object; that object."""
    last: dict[str, Any] = {}

    def check() -> bool:
        nonlocal last
        last = get_json(client, path, key)
        return bool(pred(last))

    try:
        wait_for(what or f"{path} to satisfy the condition", check, timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None
    return last


def wait_group(client: Client, gid: str, pred: Any, timeout_s: float = 90) -> dict[str, Any]:
    return wait_json(client, f"{GROUPS}/{gid}", "replication_consistency_group", pred, timeout_s)


def make_disk(client: Client, az: str, size_gb: int = 1) -> str:
    """Create a disk and wait until it is available; its id."""
    r = client.post("/v2/{p}/volumes", {"volume": {"size": size_gb, "availability_zone": az}})
    assert r.status_code == 202, r.text
    vid = str(r.json()["volume"]["id"])
    wait_json(client, f"/v2/{{p}}/volumes/{vid}", "volume", lambda v: v["status"] == "available")
    return vid
