"""`HttpAgentClient`: the controller's `AgentClient` over the agent's control API.

One clean I/O boundary: transport failures become `AgentUnavailable`, error
answers become `AgentRequestFailed(message, status, reason)`. The URL is
`unix:/path.sock` (embedded agent) or `http://host:port` (standalone).
"""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from openevs.contract import (
    AgentHealth,
    AgentRequestFailed,
    AgentUnavailable,
    DirtyRanges,
    ErrorBody,
    ErrorReason,
    Export,
    ExportGrant,
    ExportList,
    ReplicationRequest,
    ReplicationState,
    ReplicationStates,
    SizeRequest,
    VolumeInfo,
    VolumeList,
)

M = TypeVar("M", bound=BaseModel)


def _quoted(name: str) -> str:
    return quote(name, safe="")


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

    def _send(self, method: str, path: str, body: BaseModel | None = None) -> httpx.Response:
        json = None if body is None else body.model_dump(mode="json")
        try:
            response = self._http.request(method, path, json=json)
        except httpx.TransportError as exc:
            raise AgentUnavailable(
                f"agent of {self.az} at {self.url} unreachable: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            try:
                error = ErrorBody.model_validate_json(response.content).error
                reason, message = error.reason, error.message
            except ValidationError:
                reason, message = ErrorReason.BAD_ANSWER, response.text[:1024]
            raise AgentRequestFailed(
                f"agent of {self.az}: {method} {path}: {message}", reason=reason, status=response.status_code
            )
        return response

    def _call(self, answer: type[M], method: str, path: str, body: BaseModel | None = None) -> M:
        response = self._send(method, path, body)
        try:
            return answer.model_validate_json(response.content)
        except ValidationError as exc:
            raise AgentRequestFailed(
                f"agent of {self.az}: {method} {path}: the answer is not a {answer.__name__}: {exc}",
                reason=ErrorReason.BAD_ANSWER,
            ) from exc

    def health(self) -> AgentHealth:
        return self._call(AgentHealth, "GET", "/health")

    def list_volumes(self) -> list[VolumeInfo]:
        return self._call(VolumeList, "GET", "/volumes").volumes

    def get_volume(self, volume_id: str) -> VolumeInfo:
        return self._call(VolumeInfo, "GET", f"/volumes/{_quoted(volume_id)}")

    def create_volume(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        return self._call(
            VolumeInfo, "PUT", f"/volumes/{_quoted(volume_id)}", SizeRequest(size_bytes=size_bytes)
        )

    def grow_volume(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        path = f"/volumes/{_quoted(volume_id)}/grow"
        return self._call(VolumeInfo, "POST", path, SizeRequest(size_bytes=size_bytes))

    def delete_volume(self, volume_id: str) -> None:
        self._send("DELETE", f"/volumes/{_quoted(volume_id)}")

    def grant_export(self, export_name: str, volume_id: str, read_only: bool) -> None:
        grant = ExportGrant(volume_id=volume_id, read_only=read_only)
        self._call(Export, "PUT", f"/exports/{_quoted(export_name)}", grant)

    def list_exports(self) -> list[Export]:
        return self._call(ExportList, "GET", "/exports").exports

    def revoke_export(self, export_name: str) -> None:
        self._send("DELETE", f"/exports/{_quoted(export_name)}")

    # -- replication (agent/mirror/) ---------------------------------------

    def _repl_path(self, volume_id: str, suffix: str = "") -> str:
        return f"/volumes/{_quoted(volume_id)}/replication{suffix}"

    def set_replication(self, volume_id: str, request: ReplicationRequest) -> ReplicationState:
        return self._call(ReplicationState, "PUT", self._repl_path(volume_id), request)

    def get_replication(self, volume_id: str) -> ReplicationState:
        return self._call(ReplicationState, "GET", self._repl_path(volume_id))

    def list_replication(self) -> dict[str, ReplicationState]:
        return {s.volume_id: s for s in self._call(ReplicationStates, "GET", "/replication").volumes}

    def replication_changes(self, since: int | None) -> ReplicationStates:
        """Every state (`since` None), or only those changed after version `since`."""
        path = "/replication" if since is None else f"/replication?since={int(since)}"
        return self._call(ReplicationStates, "GET", path)

    def get_replication_dirty(self, volume_id: str) -> DirtyRanges:
        return self._call(DirtyRanges, "GET", self._repl_path(volume_id, "/dirty"))

    def delete_replication(self, volume_id: str) -> None:
        self._send("DELETE", self._repl_path(volume_id))

    def pause_replication(self, volume_id: str) -> ReplicationState:
        return self._call(ReplicationState, "POST", self._repl_path(volume_id, "/pause"))

    def resume_replication(self, volume_id: str) -> ReplicationState:
        return self._call(ReplicationState, "POST", self._repl_path(volume_id, "/resume"))

    def pause_group(self, group_id: str) -> ReplicationStates:
        return self._call(ReplicationStates, "POST", f"/groups/{_quoted(group_id)}/pause")

    def resume_group(self, group_id: str) -> ReplicationStates:
        return self._call(ReplicationStates, "POST", f"/groups/{_quoted(group_id)}/resume")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpAgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
