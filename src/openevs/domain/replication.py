"""Replication pairs and consistency groups: states, transition tables, rules.

Statuses are the exact strings of the EVS reference (appendix). The
`replication_status` of a pair is never decided here: it is measured on the
production disk's agent and copied as it is (see domain/measurement.py).
"""

from __future__ import annotations

from enum import StrEnum

from openevs.domain.errors import InvalidInput
from openevs.domain.states import StateMachine

REPLICATION_MODEL = "hypermetro"

# failure_detail values (appendix: details_of_evs_replication_failure_detail_values)
FD_CAPACITY_MISMATCH = "37100041"
FD_LINK = "37100043"
FD_PRODUCTION_MISSING = "37100048"
FD_DR_MISSING = "37100050"
FD_PRODUCTION_PAIRED = "37100053"
FD_DR_PAIRED = "37100054"
FD_DR_SERVER_RUNNING = "37100058"
FD_PRIMARY_POOL = "37100177"
FD_SECONDARY_POOL = "37100178"
FD_INTERNAL = "37000212"
FD_BUSY = "37000216"
FD_GROUP_LIMIT_PRIMARY = "37100017"
FD_GROUP_LIMIT_SECONDARY = "37100159"

FAULT_NONE = "0"
FAULT_PRODUCTION = "2"  # the production disk cannot be read or written: failover advised
FAULT_LINK = "5"  # the replication link is down: failover not possible from here


class Role(StrEnum):
    """A volume's replication role on its agent."""

    STANDALONE = "standalone"
    PRIMARY = "primary"
    SECONDARY = "secondary"


class ReplicationStatus(StrEnum):
    COPYING = "copying"
    ACTIVE = "active"
    ACTIVE_STOPPED = "active-stopped"
    INACTIVE = "inactive"
    ERROR = "error"


class PairStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    ERROR = "error"
    DELETING = "deleting"
    ERROR_DELETING = "error_deleting"


class PairTrigger(StrEnum):
    CONFIGURED = "configured"  # both agents hold their roles; the initial copy runs
    CREATE_FAILED = "create_failed"
    DELETE = "delete"
    DELETE_FAILED = "delete_failed"


P, PT = PairStatus, PairTrigger

PAIR_TRANSITIONS: dict[tuple[PairStatus, PairTrigger], PairStatus] = {
    (P.CREATING, PT.CONFIGURED): P.AVAILABLE,
    (P.CREATING, PT.CREATE_FAILED): P.ERROR,
    (P.AVAILABLE, PT.DELETE): P.DELETING,
    (P.ERROR, PT.DELETE): P.DELETING,
    (P.ERROR_DELETING, PT.DELETE): P.DELETING,
    (P.DELETING, PT.DELETE_FAILED): P.ERROR_DELETING,
}

PAIR_TRANSITIONAL = frozenset({P.CREATING, P.DELETING})
PAIR_MACHINE = StateMachine("replication pair", PAIR_TRANSITIONS)


class GroupStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    ERROR = "error"
    DELETING = "deleting"
    ERROR_DELETING = "error_deleting"
    UPDATING = "updating"
    REVERSING = "reversing"
    ERROR_REVERSING = "error_reversing"
    FAILOVERING = "failovering"
    FAILOVERED = "failovered"
    ERROR_FAILOVERING = "error_failovering"


class GroupTrigger(StrEnum):
    CREATED = "created"
    CREATE_FAILED = "create_failed"
    UPDATE = "update"  # PUT: add/remove members
    UPDATED = "updated"
    UPDATE_FAILED = "update_failed"
    PAUSE = "os-stop-replication-consistency-group"
    SYNC = "os-sync-replication-consistency-group"
    FAILOVER = "os-failover-replication-consistency-group"
    FAILED_OVER = "failed_over"
    FAILOVER_FAILED = "failover_failed"
    REVERSE = "os-reverse-replication-consistency-group"
    REVERSED = "reversed"
    REVERSE_FAILED = "reverse_failed"
    REPROTECT = "os-reprotect-replication-consistency-group"
    REPROTECTED = "reprotected"
    REPROTECT_FAILED = "reprotect_failed"
    EXTEND = "os-extend-replication-volumes"
    DELETE = "delete"
    DELETE_FAILED = "delete_failed"


G, GT = GroupStatus, GroupTrigger

GROUP_TRANSITIONS: dict[tuple[GroupStatus, GroupTrigger], GroupStatus] = {
    (G.CREATING, GT.CREATED): G.AVAILABLE,
    (G.CREATING, GT.CREATE_FAILED): G.ERROR,
    (G.AVAILABLE, GT.UPDATE): G.UPDATING,
    (G.UPDATING, GT.UPDATED): G.AVAILABLE,
    (G.UPDATING, GT.UPDATE_FAILED): G.ERROR,
    (G.AVAILABLE, GT.PAUSE): G.AVAILABLE,
    (G.AVAILABLE, GT.SYNC): G.AVAILABLE,
    (G.AVAILABLE, GT.FAILOVER): G.FAILOVERING,
    (G.ERROR, GT.FAILOVER): G.FAILOVERING,
    (G.ERROR_FAILOVERING, GT.FAILOVER): G.FAILOVERING,
    (G.FAILOVERING, GT.FAILED_OVER): G.FAILOVERED,
    (G.FAILOVERING, GT.FAILOVER_FAILED): G.ERROR_FAILOVERING,
    (G.AVAILABLE, GT.REVERSE): G.REVERSING,
    (G.ERROR_REVERSING, GT.REVERSE): G.REVERSING,
    # A switchover that timed out left every old primary primary: sync recovers it.
    (G.ERROR_REVERSING, GT.SYNC): G.AVAILABLE,
    (G.REVERSING, GT.REVERSED): G.AVAILABLE,
    (G.REVERSING, GT.REVERSE_FAILED): G.ERROR_REVERSING,
    # Reprotect reconfigures the roles (status updating), then resyncs while available.
    (G.FAILOVERED, GT.REPROTECT): G.UPDATING,
    (G.UPDATING, GT.REPROTECTED): G.AVAILABLE,
    (G.UPDATING, GT.REPROTECT_FAILED): G.FAILOVERED,
    (G.AVAILABLE, GT.EXTEND): G.AVAILABLE,
    (G.AVAILABLE, GT.DELETE): G.DELETING,
    (G.ERROR, GT.DELETE): G.DELETING,
    (G.ERROR_DELETING, GT.DELETE): G.DELETING,
    (G.DELETING, GT.DELETE_FAILED): G.ERROR_DELETING,
}

GROUP_TRANSITIONAL = frozenset({G.CREATING, G.UPDATING, G.REVERSING, G.FAILOVERING, G.DELETING})
GROUP_MACHINE = StateMachine("replication consistency group", GROUP_TRANSITIONS)


def check_model(model: str) -> None:
    if model != REPLICATION_MODEL:
        raise InvalidInput(
            f"replication_model must be {REPLICATION_MODEL!r}; {model[:64]!r} is not supported"
        )


def join_volume_ids(ids: list[str]) -> str:
    """The documented quirk: ONE comma-joined string, in the request's order."""
    return ",".join(ids)
