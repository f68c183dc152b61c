"""The one interface through which the controller drives a storage agent.

The controller never touches pool files itself: it asks the agent of the
volume's AZ. `HttpAgentClient` (agent/client.py) implements this over the
agent's control API (agent/control.py), whether the agent is an embedded
child process of `openevs serve` (unix socket) or a standalone
`openevs agent` on another host (TCP). Every call is idempotent, so the
reconciler can repeat it after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class AgentUnavailable(Exception):
    """The agent cannot be reached (down, restarting, network cut)."""


class AgentRequestFailed(Exception):
    """The agent answered but refused or failed the request."""

    def __init__(self, message: str, *, status: int = 500, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # e.g. "no_space", "io_error", "not_found"


@dataclass(frozen=True)
class AgentHealth:
    az: str
    nbd_host: str
    nbd_port: int
    boot_id: str  # changes at every agent start
    capacity_bytes: int
    free_bytes: int
    volume_count: int


@dataclass(frozen=True)
class VolumeInfo:
    volume_id: str
    size_bytes: int
    allocated_bytes: int


class AgentClient(Protocol):
    az: str

    def health(self) -> AgentHealth: ...

    def list_volumes(self) -> list[VolumeInfo]: ...

    def create_volume(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        """Create a sparse volume; if it exists with this size, succeed."""
        ...

    def grow_volume(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        """Grow to size_bytes; growing to the current size succeeds; shrinking is refused."""
        ...

    def delete_volume(self, volume_id: str) -> None:
        """Close its exports and remove the file; absent volume succeeds."""
        ...

    def grant_export(self, export_name: str, volume_id: str, read_only: bool) -> None: ...

    def revoke_export(self, export_name: str) -> None:
        """Revoke and close its connections; unknown name succeeds."""
        ...

    # Replication (agent/mirror/manager.py has the rules). Configs and states are
    # plain dicts: {role, epoch, pair_id, group_id, peer: {host, port, export},
    # link_export, mirroring, initial_sync, add_dirty: [[offset, length], ...]}.

    def set_replication(self, volume_id: str, config: dict[str, Any]) -> dict[str, Any]:
        """Apply a config; the same one again is a no-op; a lower epoch is refused (409)."""
        ...

    def get_replication(self, volume_id: str) -> dict[str, Any]:
        """{role, epoch, replication_status, link_up, mirroring, fenced, dirty_bytes,
        sync: {copied_bytes, total_bytes} | None, resynced_bytes_total, io_error, ...}"""
        ...

    def get_replication_dirty(self, volume_id: str) -> list[list[int]]: ...

    def list_replication(self) -> dict[str, dict[str, Any]]: ...

    def delete_replication(self, volume_id: str) -> None:
        """Back to standalone: stop forwarding, drop the bitmap, revoke the link export."""
        ...

    def pause_replication(self, volume_id: str) -> dict[str, Any]: ...

    def resume_replication(self, volume_id: str) -> dict[str, Any]: ...

    def pause_group(self, group_id: str) -> dict[str, Any]:
        """Stop mirroring every member on this agent at one instant."""
        ...

    def resume_group(self, group_id: str) -> dict[str, Any]: ...

    def close(self) -> None: ...
