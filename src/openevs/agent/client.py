"""`HttpAgentClient`: the controller's `AgentClient` over the agent's control API.

One clean I/O boundary: transport failures become `AgentUnavailable`, error
answers become `AgentRequestFailed(message, status, reason)`. The URL is
`unix:/path.sock` (embedded agent) or `http://host:port` (standalone).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from openevs.agent.interface import (
    AgentHealth,
    AgentRequestFailed,
    AgentUnavailable,
    VolumeInfo,
)


def _volume(body: dict[str, Any]) -> VolumeInfo:
    return VolumeInfo(
        volume_id=str(body["volume_id"]),
        size_bytes=int(body["size_bytes"]),
        allocated_bytes=int(body["allocated_bytes"]),
    )


class HttpAgentClient:
    """Sync, thread-safe client of one agent; every call is idempotent."""

    def __init__(self, az: str, url: str, timeout_s: float = 10.0) -> None:
        self.az = az
        self.url = url
        if url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=url[len("unix:") :])
            base_url = "http://agent"
        elif url.startswith(("http://", "https://")):
            transport = httpx.HTTPTransport()
            base_url = url.rstrip("/")
        else:
            raise ValueError(f"agent url must be unix:/path.sock or http://host:port, got {url!r}")
        self._http = httpx.Client(transport=transport, base_url=base_url, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"HttpAgentClient(az={self.az!r}, url={self.url!r})"

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.TransportError as exc:
            raise AgentUnavailable(
                f"agent of {self.az} at {self.url} unreachable: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            reason, message = "", response.text
            try:
                error = response.json()["error"]
                reason, message = str(error["reason"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                pass
            raise AgentRequestFailed(
                f"agent of {self.az}: {method} {path}: {message}",
                status=response.status_code,
                reason=reason,
            )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise AgentRequestFailed(
                f"agent of {self.az}: {method} {path}: answer is not JSON",
                status=502,
                reason="bad_answer",
            ) from exc

    def health(self) -> AgentHealth:
        body = self._call("GET", "/health")
        return AgentHealth(
            az=str(body["az"]),
            nbd_host=str(body["nbd_host"]),
            nbd_port=int(body["nbd_port"]),
            boot_id=str(body["boot_id"]),
            capacity_bytes=int(body["capacity_bytes"]),
            free_bytes=int(body["free_bytes"]),
            volume_count=int(body["volume_count"]),
        )

    def list_volumes(self) -> list[VolumeInfo]:
        return [_volume(v) for v in self._call("GET", "/volumes")["volumes"]]

    def get_volume(self, volume_id: str) -> VolumeInfo:
        return _volume(self._call("GET", f"/volumes/{quote(volume_id, safe='')}"))

    def create_volume(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        path = f"/volumes/{quote(volume_id, safe='')}"
        return _volume(self._call("PUT", path, {"size_bytes": size_bytes}))

    def grow_volume(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        path = f"/volumes/{quote(volume_id, safe='')}/grow"
        return _volume(self._call("POST", path, {"size_bytes": size_bytes}))

    def delete_volume(self, volume_id: str) -> None:
        self._call("DELETE", f"/volumes/{quote(volume_id, safe='')}")

    def grant_export(self, export_name: str, volume_id: str, read_only: bool) -> None:
        self._call(
            "PUT",
            f"/exports/{quote(export_name, safe='')}",
            {"volume_id": volume_id, "read_only": bool(read_only)},
        )

    def list_exports(self) -> dict[str, tuple[str, bool]]:
        """name -> (volume_id, read_only) of every grant the agent holds."""
        body = self._call("GET", "/exports")
        return {e["name"]: (str(e["volume_id"]), bool(e["read_only"])) for e in body["exports"]}

    def revoke_export(self, export_name: str) -> None:
        self._call("DELETE", f"/exports/{quote(export_name, safe='')}")

    # -- replication (agent/mirror/) ---------------------------------------

    def _repl_path(self, volume_id: str, suffix: str = "") -> str:
        return f"/volumes/{quote(volume_id, safe='')}/replication{suffix}"

    def set_replication(self, volume_id: str, config: dict[str, Any]) -> dict[str, Any]:
        """Apply a replication config (role, epoch, pair_id, group_id, peer, link_export,
        mirroring, initial_sync, add_dirty); the same config again is a no-op."""
        result: dict[str, Any] = self._call("PUT", self._repl_path(volume_id), config)
        return result

    def get_replication(self, volume_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", self._repl_path(volume_id))
        return result

    def list_replication(self) -> dict[str, dict[str, Any]]:
        """volume_id -> replication state of every replicated volume of this agent."""
        return {str(s["volume_id"]): s for s in self._call("GET", "/replication")}

    def get_replication_dirty(self, volume_id: str) -> list[list[int]]:
        """The merged dirty ranges [[offset, length], ...] of a replicated volume."""
        return [[int(o), int(n)] for o, n in self._call("GET", self._repl_path(volume_id, "/dirty"))]

    def delete_replication(self, volume_id: str) -> None:
        self._call("DELETE", self._repl_path(volume_id))

    def pause_replication(self, volume_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", self._repl_path(volume_id, "/pause"))
        return result

    def resume_replication(self, volume_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", self._repl_path(volume_id, "/resume"))
        return result

    def pause_group(self, group_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/groups/{quote(group_id, safe='')}/pause")
        return result

    def resume_group(self, group_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/groups/{quote(group_id, safe='')}/resume")
        return result

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpAgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
