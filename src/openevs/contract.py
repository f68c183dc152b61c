"""The typed contract between the controller and its storage agents.

Every value that crosses the controller <-> agent boundary is one of these
pydantic models, in both directions: the agent's control API
(agent/control.py) parses requests into them and answers with them, the
controller's client (agent/client.py) sends them and validates every answer
into them, and the reconciler only ever sees them. Nothing untyped crosses.

Beside it: `contract_client.py` (the `AgentClient` interface the reconciler
calls), `contract_plans.py` (the plans a consistency group's transition
carries out, stored in the group row's `pending` column and validated
whenever they are loaded, so a crashed reconciler resumes a plan it can
trust), `contract_snapshots.py` and `contract_ops.py` (snapshots; verify and
resync limits).

Rules this module keeps:

- models are frozen and refuse unknown fields, so a misspelt key is an
  error at the boundary, not a silently ignored value;
- a config is normalised on the way in (a primary has no link export, a
  secondary no peer), so "the same config again" compares equal;
- errors are part of the project's error tree: `AgentUnavailable` (the
  agent cannot be reached) and `AgentRequestFailed` (it answered and
  refused, with a machine-readable `ErrorReason`).
"""

from __future__ import annotations

import enum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from openevs.domain.errors import OpenEvsError
from openevs.domain.replication import ReplicationStatus, Role

NAME_MAX = 255  # export names and hosts
ID_MAX = 128  # volume, pair and group ids


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes`, validated like a new value (model_copy does not validate)."""
        return self.model_validate({**self.model_dump(), **changes})


# -- errors -------------------------------------------------------------------


class ErrorReason(enum.StrEnum):
    """What an agent's error answer says went wrong; the controller acts on it."""

    NOT_FOUND = "not_found"
    INVALID_INPUT = "invalid_input"
    CONFLICT = "conflict"
    STALE_EPOCH = "stale_epoch"
    NO_SPACE = "no_space"
    IO_ERROR = "io_error"
    BAD_ANSWER = "bad_answer"  # the answer did not match this contract
    RESOURCE_SHORTAGE = "resource_shortage"  # the agent ran out of descriptors or memory; retry

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]

    @property
    def pool_fault(self) -> bool:
        """The volume's storage pool failed (not the request)."""
        return self in (ErrorReason.IO_ERROR, ErrorReason.NO_SPACE)


_HTTP_STATUS = {
    ErrorReason.NOT_FOUND: 404,
    ErrorReason.INVALID_INPUT: 400,
    ErrorReason.CONFLICT: 409,
    ErrorReason.STALE_EPOCH: 409,
    ErrorReason.NO_SPACE: 507,
    ErrorReason.IO_ERROR: 500,
    ErrorReason.BAD_ANSWER: 502,
    ErrorReason.RESOURCE_SHORTAGE: 503,
}


class AgentError(OpenEvsError):
    """Something went wrong talking to a storage agent."""


class AgentUnavailable(AgentError):
    """The agent cannot be reached (down, restarting, network cut)."""


class AgentRequestFailed(AgentError):
    """The agent answered but refused or failed the request."""

    def __init__(self, message: str, *, reason: ErrorReason = ErrorReason.IO_ERROR, status: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status or reason.http_status


class ErrorDetail(Model):
    reason: ErrorReason
    message: str


class ErrorBody(Model):
    """Every error answer of the control API: `{"error": {"reason", "message"}}`."""

    error: ErrorDetail


# -- volumes and exports ---------------------------------------------------------


class AgentHealth(Model):
    az: str
    nbd_host: str
    nbd_port: int
    nbd_tls: Literal["off", "optional", "required"] = "off"  # the NBD port's TLS policy
    witness_port: int = 0  # the witness this agent serves for other AZs' pairs (0: none)
    boot_id: str  # changes at every agent start
    capacity_bytes: int
    free_bytes: int
    volume_count: int
    replica_count: int = 0  # replicated volumes (either role)
    peer_connections: int = 0  # link connections this agent opened to peer agents (all pairs share them)
    fd_soft_limit: int = 0  # RLIMIT_NOFILE after the agent raised it at start
    fd_hard_limit: int = 0
    open_fds: int = 0


class VolumeInfo(Model):
    volume_id: str
    size_bytes: int
    allocated_bytes: int


class VolumeList(Model):
    volumes: list[VolumeInfo]


class SizeRequest(Model):
    size_bytes: StrictInt


class ExportGrant(Model):
    """Which volume an NBD client may open under an export name, and whether it may write."""

    volume_id: str = Field(min_length=1, max_length=ID_MAX)
    read_only: StrictBool = False


class Export(Model):
    name: str
    volume_id: str
    read_only: bool


class ExportList(Model):
    exports: list[Export]


# -- replication ------------------------------------------------------------------


class Peer(Model):
    """Where a primary forwards its writes: the DR volume's link export on the peer agent."""

    host: str = Field(min_length=1, max_length=NAME_MAX)
    port: StrictInt = Field(ge=1, le=65535)
    export: str = Field(min_length=1, max_length=NAME_MAX)
    az: str = Field(default="", max_length=NAME_MAX)  # over TLS the peer must hold agent:<az>


class WitnessAddress(Model):
    """Where a witness answers (witness/protocol.py over TCP)."""

    host: str = Field(min_length=1, max_length=NAME_MAX)
    port: StrictInt = Field(ge=1, le=65535)
    name: str = Field(default="", max_length=NAME_MAX)  # for messages: "az3.dc3", "witness-1"

    @property
    def label(self) -> str:
        where = f"{self.host}:{self.port}"
        return f"{self.name} ({where})" if self.name else where


class Arbiter(Model):
    """The arbitration of a primary: which unit it belongs to and who arbitrates it.

    Absent: static priority (two AZs only: the primary always goes on, DESIGN 3)."""

    key: str = Field(pattern=r"^(pair|group):[A-Za-z0-9_-]+$", max_length=160)
    epoch: StrictInt = Field(ge=0)  # the unit's epoch (the group's for a member of a group)
    witness: WitnessAddress
    # A write the peer lacks waits this long for the witness's grant, then fails with
    # EIO; 0: it fails at once (DRBD's on-no-quorum io-error).
    suspend_timeout_s: float = Field(default=60.0, ge=0)


class ReplicationConfig(Model):
    """A volume's replication role, as the controller sets it and the agent persists it."""

    role: Role
    epoch: StrictInt = Field(ge=0)
    pair_id: str = Field(default="", max_length=ID_MAX)
    group_id: str | None = Field(default=None, max_length=ID_MAX)
    peer: Peer | None = None  # primary: where to forward
    link_export: str | None = Field(default=None, max_length=NAME_MAX)  # secondary: what the primary opens
    mirroring: StrictBool = True
    arbiter: Arbiter | None = None  # primary: None is static priority
    # primary: the sync copies at most this many bytes/s (0: no limit but the agent's own)
    resync_rate_bytes_per_s: StrictInt = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            role = data.get("role")
            if role != Role.SECONDARY:
                data["link_export"] = None
            data["group_id"] = data.get("group_id") or None
            data["link_export"] = data.get("link_export") or None
        return data

    @model_validator(mode="after")
    def _complete(self) -> ReplicationConfig:
        if self.role is Role.PRIMARY and self.mirroring and self.peer is None:
            raise ValueError("a mirroring primary needs a peer {host, port, export}")
        if self.role is Role.SECONDARY and not self.link_export:
            raise ValueError("a secondary needs a link_export")
        return self


class ReplicationRequest(ReplicationConfig):
    """A config to apply, plus what to do to the data while applying it."""

    initial_sync: StrictBool = False  # primary: copy all data; secondary: discard all first
    add_dirty: list[tuple[StrictInt, StrictInt]] = Field(default_factory=list)  # (offset, length)

    def config(self) -> ReplicationConfig:
        return ReplicationConfig.model_validate(self.model_dump(exclude={"initial_sync", "add_dirty"}))


BATCH_MAX = 1000  # configs in one POST /replication/batch


class ReplicationBatchItem(Model):
    volume_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # the pool's volume ids
    request: ReplicationRequest


class ReplicationBatch(Model):
    """Configs applied in order, each exactly as its own PUT would be; the first
    refusal ends the batch (with that PUT's error) and leaves the earlier ones applied."""

    items: list[ReplicationBatchItem] = Field(max_length=BATCH_MAX)


class SyncProgress(Model):
    copied_bytes: int
    total_bytes: int


class ArbitrationState(Model):
    """What a primary knows of its arbitration (only with a witness)."""

    witness: str  # WitnessAddress.label
    witness_reachable: bool
    lease: bool  # it holds the witness's grant to acknowledge writes its peer lacks
    lease_left_s: float = 0.0
    outdated: bool = False  # the witness granted a higher epoch to the peer: this side lost
    refusal: str | None = None  # the witness's last refusal, if any
    suspended: bool = False  # writes wait for the witness or the peer
    suspended_writes: int = 0
    suspended_for_s: float = 0.0


class ReplicationState(Model):
    """What an agent measures of one volume's replication (its bytes, its link)."""

    volume_id: str
    role: Role
    epoch: int
    pair_id: str = ""
    group_id: str | None = None
    peer: Peer | None = None
    link_export_set: bool = False
    replication_status: ReplicationStatus | None = None  # only a primary knows it
    link_up: bool = False
    link_error: str | None = None
    mirroring: bool = False
    fenced: bool = False
    group_split: bool = False
    dirty_bytes: int = 0
    sync: SyncProgress | None = None
    resynced_bytes_total: int = 0
    # The sync's copy rate and time left (bytes left over how fast they shrink; None:
    # they do not shrink), and the seconds since the peer last held every
    # acknowledged write (0 when nothing is left to copy; agent/mirror/meter.py).
    resync_rate_bytes_per_s: float = 0.0
    resync_eta_s: float | None = None
    lag_s: float = 0.0
    io_error: bool = False
    arbitration: ArbitrationState | None = None

    @classmethod
    def standalone(cls, volume_id: str) -> ReplicationState:
        return cls(volume_id=volume_id, role=Role.STANDALONE, epoch=0)


class ReplicationStates(Model):
    volumes: list[ReplicationState]
    # GET /replication?since=V: only the volumes whose state changed after version V
    # (`changed_only`); `version` is the agent's counter now, valid for `boot_id`.
    version: int = 0
    boot_id: str = ""
    changed_only: bool = False


class DirtyRanges(Model):
    """Merged (offset, length) byte ranges a primary holds that its peer may lack."""

    ranges: list[tuple[int, int]]
