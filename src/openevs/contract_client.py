"""What the controller asks of an agent: the one interface both the in-process
and the HTTP agent client (agent/client.py) implement; every call is idempotent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from openevs.contract import (
    AgentHealth,
    DirtyRanges,
    Export,
    ReplicationRequest,
    ReplicationState,
    ReplicationStates,
    VolumeInfo,
)
from openevs.contract_snapshots import (
    CopyRequest,
    GroupSnapshotRequest,
    JobProgress,
    SnapshotDeletion,
    SnapshotInfo,
)

if TYPE_CHECKING:
    from openevs.contract_ops import ChangesRequest, HashRequest, RegionChanges, RegionHashes, ResyncRate


class AgentClient(Protocol):
    """How the controller drives one AZ's agent. Every call is idempotent, so the
    reconciler can repeat it after a crash; errors are `AgentError`s."""

    az: str

    def health(self) -> AgentHealth: ...

    def list_volumes(self) -> list[VolumeInfo]: ...

    def get_volume(self, volume_id: str) -> VolumeInfo: ...

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

    def list_exports(self) -> list[Export]: ...

    def revoke_export(self, export_name: str) -> None:
        """Revoke and close its connections; unknown name succeeds."""
        ...

    def set_replication(self, volume_id: str, request: ReplicationRequest) -> ReplicationState:
        """Apply a config; the same one again is a no-op; a lower epoch is refused (stale_epoch)."""
        ...

    def set_replication_batch(self, configs: list[tuple[str, ReplicationRequest]]) -> list[ReplicationState]:
        """`set_replication` of each (volume_id, request) in order, in one call (or a few);
        the first refusal raises and leaves the configs before it applied."""
        ...

    def get_replication(self, volume_id: str) -> ReplicationState: ...

    def get_replication_dirty(self, volume_id: str) -> DirtyRanges: ...

    def replication_changes(self, since: int | None) -> ReplicationStates:
        """Every replication state (`since` None), or those changed after version `since`."""

    def list_replication(self) -> dict[str, ReplicationState]:
        """volume_id -> state of every replicated volume of the agent (one call)."""
        ...

    def delete_replication(self, volume_id: str) -> None:
        """Back to standalone: stop forwarding, drop the bitmap, revoke the link export."""
        ...

    def pause_replication(self, volume_id: str) -> ReplicationState: ...

    def resume_replication(self, volume_id: str) -> ReplicationState: ...

    def pause_group(self, group_id: str) -> ReplicationStates:
        """Stop mirroring every member on this agent at one instant."""
        ...

    def resume_group(self, group_id: str) -> ReplicationStates: ...

    # -- snapshots ---------------------------------------------------------

    def create_snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        """Take a crash-consistent snapshot; an existing one is success."""
        ...

    def create_group_snapshot(self, request: GroupSnapshotRequest) -> list[SnapshotInfo]:
        """Snapshots of several of the agent's disks at one instant; existing ones are success."""
        ...

    def get_snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo: ...

    def list_snapshots(self, volume_id: str) -> list[SnapshotInfo]: ...

    def delete_snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotDeletion:
        """Start (or continue) removing it; `done` once gone; absent succeeds."""
        ...

    def copy_volume(self, volume_id: str, request: CopyRequest) -> JobProgress:
        """Start (or report) making `volume_id` a copy; `done` once the volume exists complete."""
        ...

    def rollback_snapshot(self, volume_id: str, snapshot_id: str) -> JobProgress:
        """Start (or report) writing the snapshot's bytes back to its volume."""
        ...

    def grant_snapshot_export(self, export_name: str, volume_id: str, snapshot_id: str) -> None: ...

    def revoke_snapshot_export(self, export_name: str) -> None: ...

    def hash_regions(self, volume_id: str, request: HashRequest) -> RegionHashes:
        """Online verify: keyed digests of a range, region by region (never the data)."""
        ...

    def region_changes(self, volume_id: str, request: ChangesRequest) -> RegionChanges: ...

    def set_resync_rate(self, volume_id: str, rate: ResyncRate) -> ReplicationState:
        """Change a primary's resync limit (kept in its persisted config)."""
        ...

    def mark_dirty(self, volume_id: str, ranges: DirtyRanges) -> ReplicationState:
        """Mark ranges of a primary dirty (a verify found them different); the sync copies them."""
        ...

    def close(self) -> None: ...
