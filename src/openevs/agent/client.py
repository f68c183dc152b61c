"""`HttpAgentClient`: the controller's `AgentClient` over the agent's control API.

One clean I/O boundary: transport failures become `AgentUnavailable`, error
answers become `AgentRequestFailed(message, status, reason)`. The URL is
`unix:/path.sock` (embedded agent), `https://host:port` (standalone, mutual
TLS: the client presents the controller's certificate, checks the agent's
against the CA and the host name, and then that it names the agent of
this AZ) or `http://127.0.0.1:port` (a standalone agent on loopback).
When the controller's certificate, key or CA files change, the next call
opens its connections with the new ones (a rotation needs no restart).
"""

from __future__ import annotations

import ssl
import threading
from typing import TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from openevs.contract import (
    BATCH_MAX,
    AgentHealth,
    AgentRequestFailed,
    AgentUnavailable,
    DirtyRanges,
    ErrorBody,
    ErrorReason,
    Export,
    ExportGrant,
    ExportList,
    ReplicationBatch,
    ReplicationBatchItem,
    ReplicationRequest,
    ReplicationState,
    ReplicationStates,
    SizeRequest,
    VolumeInfo,
    VolumeList,
)
from openevs.contract_ops import ChangesRequest, HashRequest, RegionChanges, RegionHashes, ResyncRate
from openevs.contract_snapshots import (
    CopyRequest,
    GroupSnapshotRequest,
    JobProgress,
    SnapshotDeletion,
    SnapshotExportGrant,
    SnapshotInfo,
    SnapshotList,
)
from openevs.security import PeerRejected, PkiError, redacted
from openevs.security.identity import CertRole
from openevs.security.pki import TlsFiles
from openevs.security.reloading import files_stamp
from openevs.security.tls import client_context, require_peer

M = TypeVar("M", bound=BaseModel)


def _quoted(name: str) -> str:
    return quote(name, safe="")


def _shown(path: str) -> str:
    """The path as errors (and so logs) show it: an export name is a secret."""
    head, sep, name = path.partition("/exports/")
    return f"{head}{sep}{redacted(name)}" if sep and name else path


class HttpAgentClient:
    """Sync, thread-safe client of one agent; every call is idempotent."""

    def __init__(self, az: str, url: str, timeout_s: float = 10.0, tls: TlsFiles | None = None) -> None:
        self.az = az
        self.url = url
        self.timeout_s = timeout_s
        self._tls = tls if url.startswith("https://") else None
        self._lock = threading.Lock()
        if url.startswith("https://") and tls is None:
            raise ValueError(
                f"agent url {url} is https but the controller has no certificate: issue one with "
                "`openevs admin pki issue --controller` or set OPENEVS_CONTROL_TLS_CERT/_KEY/_CA"
            )
        if not url.startswith(("unix:", "http://", "https://")):
            raise ValueError(
                f"agent url must be unix:/path.sock, https://host:port or http://host:port, got {url!r}"
            )
        self._stamp = files_stamp(self._tls) if self._tls is not None else None
        self._http = self._open()

    def _open(self) -> httpx.Client:
        if self.url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=self.url[len("unix:") :])
            base_url = "http://agent"
        else:
            verify = client_context(self._tls, check_hostname=True) if self._tls else True
            transport = httpx.HTTPTransport(verify=verify)
            base_url = self.url.rstrip("/")
        return httpx.Client(transport=transport, base_url=base_url, timeout=self.timeout_s)

    def _client(self) -> httpx.Client:
        """The HTTP client, reopened with the files as they are now if they changed."""
        if self._tls is None:
            return self._http
        stamp = files_stamp(self._tls)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        fresh = self._open()
                    except PkiError:
                        return self._http  # half-copied files: keep what works, try again next call
                    self._http, self._stamp = fresh, stamp  # the old one is left to calls in flight
        return self._http

    def __repr__(self) -> str:
        return f"HttpAgentClient(az={self.az!r}, url={self.url!r})"

    def _send(self, method: str, path: str, body: BaseModel | None = None) -> httpx.Response:
        json = None if body is None else body.model_dump(mode="json")
        try:
            response = self._client().request(method, path, json=json)
        except httpx.TransportError as exc:
            raise AgentUnavailable(
                f"agent of {self.az} at {self.url} unreachable: {exc or type(exc).__name__}"
            ) from exc
        if self._tls is not None:
            self._check_agent(response)
        if response.status_code >= 400:
            try:
                error = ErrorBody.model_validate_json(response.content).error
                reason, message = error.reason, error.message
            except ValidationError:
                reason, message = ErrorReason.BAD_ANSWER, response.text[:1024]
            raise AgentRequestFailed(
                f"agent of {self.az}: {method} {_shown(path)}: {message}",
                reason=reason,
                status=response.status_code,
            )
        return response

    def _check_agent(self, response: httpx.Response) -> None:
        """The server must be the agent of this AZ, not merely some server of the deployment."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        try:
            if not isinstance(sock, ssl.SSLSocket):
                raise PeerRejected("no TLS connection to check")
            require_peer(sock, CertRole.AGENT, self.az)
        except PeerRejected as exc:
            raise AgentUnavailable(f"agent of {self.az} at {self.url}: {exc}") from exc

    def _call(self, answer: type[M], method: str, path: str, body: BaseModel | None = None) -> M:
        response = self._send(method, path, body)
        try:
            return answer.model_validate_json(response.content)
        except ValidationError as exc:
            raise AgentRequestFailed(
                f"agent of {self.az}: {method} {_shown(path)}: the answer is not a {answer.__name__}: {exc}",
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

    def set_replication_batch(self, configs: list[tuple[str, ReplicationRequest]]) -> list[ReplicationState]:
        states: list[ReplicationState] = []
        for start in range(0, len(configs), BATCH_MAX):
            chunk = configs[start : start + BATCH_MAX]
            items = [ReplicationBatchItem(volume_id=v, request=r) for v, r in chunk]
            batch = ReplicationBatch(items=items)
            states += self._call(ReplicationStates, "POST", "/replication/batch", batch).volumes
        return states

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

    def hash_regions(self, volume_id: str, request: HashRequest) -> RegionHashes:
        return self._call(RegionHashes, "POST", self._repl_path(volume_id, "/hash"), request)

    def region_changes(self, volume_id: str, request: ChangesRequest) -> RegionChanges:
        return self._call(RegionChanges, "POST", self._repl_path(volume_id, "/changes"), request)

    def set_resync_rate(self, volume_id: str, rate: ResyncRate) -> ReplicationState:
        return self._call(ReplicationState, "PUT", self._repl_path(volume_id, "/resync-rate"), rate)

    def mark_dirty(self, volume_id: str, ranges: DirtyRanges) -> ReplicationState:
        return self._call(ReplicationState, "POST", self._repl_path(volume_id, "/dirty"), ranges)

    def metrics_text(self) -> bytes:
        """The agent's `/metrics` as it wrote it (Prometheus text format, no contract model)."""
        return self._send("GET", "/metrics").content

    # -- snapshots (agent/snapshot_control.py) -------------------------------

    def _snap_path(self, volume_id: str, snapshot_id: str, suffix: str = "") -> str:
        return f"/volumes/{_quoted(volume_id)}/snapshots/{_quoted(snapshot_id)}{suffix}"

    def create_snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        return self._call(SnapshotInfo, "PUT", self._snap_path(volume_id, snapshot_id))

    def create_group_snapshot(self, request: GroupSnapshotRequest) -> list[SnapshotInfo]:
        return self._call(SnapshotList, "POST", "/snapshot-groups", request).snapshots

    def get_snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        return self._call(SnapshotInfo, "GET", self._snap_path(volume_id, snapshot_id))

    def list_snapshots(self, volume_id: str) -> list[SnapshotInfo]:
        return self._call(SnapshotList, "GET", f"/volumes/{_quoted(volume_id)}/snapshots").snapshots

    def delete_snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotDeletion:
        return self._call(SnapshotDeletion, "DELETE", self._snap_path(volume_id, snapshot_id))

    def copy_volume(self, volume_id: str, request: CopyRequest) -> JobProgress:
        return self._call(JobProgress, "PUT", f"/volumes/{_quoted(volume_id)}/copy", request)

    def rollback_snapshot(self, volume_id: str, snapshot_id: str) -> JobProgress:
        return self._call(JobProgress, "POST", self._snap_path(volume_id, snapshot_id, "/rollback"))

    def grant_snapshot_export(self, export_name: str, volume_id: str, snapshot_id: str) -> None:
        grant = SnapshotExportGrant(volume_id=volume_id, snapshot_id=snapshot_id)
        self._call(SnapshotExportGrant, "PUT", f"/snapshot-exports/{_quoted(export_name)}", grant)

    def revoke_snapshot_export(self, export_name: str) -> None:
        self._send("DELETE", f"/snapshot-exports/{_quoted(export_name)}")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpAgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
