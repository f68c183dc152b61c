"""What a pair's and a group's replication_status, progress and fault_level
are, given what the agents measured.

Rules this module keeps:

- a pair's row states what its production disk's agent reported of its
  bytes (dirty bitmap, link, running sync), never a label of our own; an
  agent that cannot be reached is fault "2" (the production disk cannot be
  read or written from here) and leaves the other columns as they were;
- a group is as bad as its worst member: error before copying before
  inactive before active-stopped before active, fault "2" before "5";
- progress is a string "0".."100" while copying, "100" when active, null
  otherwise; a group's is its members' average;
- a primary whose writes are suspended (cut from its peer and its witness,
  DESIGN 3) is fault "2" (the production disk cannot be written: failover
  advised) with failure_detail 37100043 (the peer AZ cannot be reached); the
  failure_detail is cleared once it resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from openevs.domain.replication import FAULT_LINK, FAULT_NONE, FAULT_PRODUCTION, FD_LINK, ReplicationStatus

STATUS_PRECEDENCE = (
    ReplicationStatus.ERROR,
    ReplicationStatus.COPYING,
    ReplicationStatus.INACTIVE,
    ReplicationStatus.ACTIVE_STOPPED,
    ReplicationStatus.ACTIVE,
)
FAULT_PRECEDENCE = (FAULT_PRODUCTION, FAULT_LINK)


class SyncReading(Protocol):
    @property
    def copied_bytes(self) -> int: ...

    @property
    def total_bytes(self) -> int: ...


class ArbitrationReading(Protocol):
    @property
    def suspended(self) -> bool: ...


class StateReading(Protocol):
    """What a production disk's agent measured (`contract.ReplicationState` is one)."""

    @property
    def replication_status(self) -> ReplicationStatus | None: ...

    @property
    def sync(self) -> SyncReading | None: ...

    @property
    def io_error(self) -> bool: ...

    @property
    def mirroring(self) -> bool: ...

    @property
    def link_up(self) -> bool: ...

    @property
    def resynced_bytes_total(self) -> int: ...

    @property
    def arbitration(self) -> ArbitrationReading | None: ...

    @property
    def dirty_bytes(self) -> int: ...

    @property
    def resync_rate_bytes_per_s(self) -> float: ...

    @property
    def resync_eta_s(self) -> float | None: ...


class MemberReading(Protocol):
    """A member pair as its row states it (`db.models.ReplicationPair` is one)."""

    @property
    def replication_status(self) -> str | None: ...

    @property
    def fault_level(self) -> str | None: ...

    @property
    def progress(self) -> str | None: ...


def progress_percent(copied_bytes: int, total_bytes: int) -> str:
    if total_bytes <= 0:
        return "100"
    return str(min(100, copied_bytes * 100 // total_bytes))


def measure_pair(
    state: StateReading | None, was_suspended: bool = False
) -> dict[str, str | int | float | None]:
    """The pair row's values that state what the production agent reported
    (`None`: the agent cannot be reached; `was_suspended`: the row said suspended)."""
    if state is None:
        return {"fault_level": FAULT_PRODUCTION}
    status = state.replication_status
    if status is ReplicationStatus.COPYING and state.sync is not None:
        progress: str | None = progress_percent(state.sync.copied_bytes, state.sync.total_bytes)
    elif status is ReplicationStatus.ACTIVE:
        progress = "100"
    else:
        progress = None
    suspended = state.arbitration is not None and state.arbitration.suspended
    if state.io_error or suspended:
        fault = FAULT_PRODUCTION
    elif state.mirroring and not state.link_up:
        fault = FAULT_LINK
    else:
        fault = FAULT_NONE
    in_sync = status is ReplicationStatus.ACTIVE and state.dirty_bytes == 0
    values: dict[str, str | int | float | None] = {
        "replication_status": None if status is None else str(status),
        "progress": progress,
        "fault_level": fault,
        "synced_bytes": state.resynced_bytes_total,
        "dirty_bytes": state.dirty_bytes,
        # In sync, nothing is left to copy: no rate (the agent's 10 s window still decays
        # after a sync ends, which would rewrite every idle row) and no ETA.
        "resync_rate_bytes_per_s": 0.0 if in_sync else state.resync_rate_bytes_per_s,
        "resync_eta_s": None if in_sync else state.resync_eta_s,
    }
    if suspended:
        values["failure_detail"] = FD_LINK
    elif was_suspended:
        values["failure_detail"] = None
    return values


@dataclass(frozen=True)
class GroupMeasurement:
    replication_status: str | None
    fault_level: str
    progress: str | None


@dataclass(frozen=True)
class GroupResync:
    """A group's resync as its members' rows state it: what is left, how fast it shrinks,
    and when the last member is done (None: no member gave an ETA)."""

    dirty_bytes: int
    resync_rate_bytes_per_s: float
    resync_eta_s: float | None


class ResyncReading(Protocol):
    @property
    def dirty_bytes(self) -> int | None: ...

    @property
    def resync_rate_bytes_per_s(self) -> float | None: ...

    @property
    def resync_eta_s(self) -> float | None: ...


def group_resync(members: Sequence[ResyncReading]) -> GroupResync:
    """The members' dirty bytes and rates summed; the ETA of the slowest member."""
    etas = [m.resync_eta_s for m in members if m.resync_eta_s is not None]
    return GroupResync(
        dirty_bytes=sum(m.dirty_bytes or 0 for m in members),
        resync_rate_bytes_per_s=sum(m.resync_rate_bytes_per_s or 0.0 for m in members),
        resync_eta_s=max(etas) if etas else None,
    )


def aggregate_group(members: Sequence[MemberReading]) -> GroupMeasurement:
    """A group's replication_status, fault_level and progress from its members' rows."""
    statuses = {m.replication_status for m in members}
    status = next((str(s) for s in STATUS_PRECEDENCE if s in statuses), None)
    faults = {m.fault_level for m in members}
    fault = next((f for f in FAULT_PRECEDENCE if f in faults), FAULT_NONE)
    progress = None
    if status == ReplicationStatus.COPYING:
        values = [int(m.progress or 0) for m in members]
        progress = str(sum(values) // len(values))
    elif status == ReplicationStatus.ACTIVE:
        progress = "100"
    return GroupMeasurement(status, fault, progress)
