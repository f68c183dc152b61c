"""The controller <-> agent contract of snapshots, copies and rollbacks
(agent/snapshot_control.py, agent/snapshot_store.py)."""

from __future__ import annotations

from pydantic import Field, StrictInt

from openevs.contract import ID_MAX, Model


class SnapshotInfo(Model):
    """One snapshot of a volume on its agent; `preserved_bytes` is the space its delta holds."""

    volume_id: str
    snapshot_id: str
    size_bytes: int
    preserved_bytes: int
    deleting: bool = False


class SnapshotList(Model):
    snapshots: list[SnapshotInfo]


class GroupSnapshotMember(Model):
    volume_id: str = Field(min_length=1, max_length=ID_MAX)
    snapshot_id: str = Field(min_length=1, max_length=ID_MAX)


class GroupSnapshotRequest(Model):
    """Snapshots of several disks of the agent, all at one instant (a DR drill)."""

    members: list[GroupSnapshotMember] = Field(min_length=1, max_length=1000)


class SnapshotDeletion(Model):
    """The answer to a snapshot delete: `done` once it is gone (a merge may take a while)."""

    done: bool


class SnapshotExportGrant(Model):
    """An NBD export name that serves one snapshot, read-only."""

    volume_id: str = Field(min_length=1, max_length=ID_MAX)
    snapshot_id: str = Field(min_length=1, max_length=ID_MAX)


class CopyRequest(Model):
    """Make a new volume a copy of a snapshot, or (`snapshot_id` None) of a volume's current state."""

    source_volume_id: str = Field(min_length=1, max_length=ID_MAX)
    snapshot_id: str | None = Field(default=None, min_length=1, max_length=ID_MAX)
    size_bytes: StrictInt


class JobProgress(Model):
    """A long agent job (a copy, a rollback): asking again reports progress, `done` at the end."""

    done: bool
    copied_bytes: int = 0
    total_bytes: int = 0
