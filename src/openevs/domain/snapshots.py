"""EVS snapshots: their states, the transition table and the rules of their fields.

States are the strings the API shows (reference: evs_snapshot_status).
`rollbacking` is entered by a rollback and left when the disk holds the
snapshot's bytes again. The documented `backing-up` (backups) is not used.
"""

from __future__ import annotations

from enum import StrEnum

from openevs.domain import codes
from openevs.domain.errors import InvalidInput, InvalidState
from openevs.domain.states import StateMachine
from openevs.domain.volumes import check_text

RESERVED_NAME_PREFIX = "autobk_snapshot_"


class SnapshotStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    ERROR = "error"
    DELETING = "deleting"
    ERROR_DELETING = "error_deleting"
    ROLLBACKING = "rollbacking"
    ERROR_ROLLBACKING = "error_rollbacking"


class SnapshotTrigger(StrEnum):
    CREATED = "created"  # the agent holds it
    CREATE_FAILED = "create_failed"
    DELETE = "delete"
    DELETE_FAILED = "delete_failed"
    ROLLBACK = "rollback"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


S, ST = SnapshotStatus, SnapshotTrigger

SNAPSHOT_TRANSITIONS: dict[tuple[SnapshotStatus, SnapshotTrigger], SnapshotStatus] = {
    (S.CREATING, ST.CREATED): S.AVAILABLE,
    (S.CREATING, ST.CREATE_FAILED): S.ERROR,
    (S.AVAILABLE, ST.DELETE): S.DELETING,
    (S.ERROR, ST.DELETE): S.DELETING,
    (S.ERROR_DELETING, ST.DELETE): S.DELETING,
    (S.DELETING, ST.DELETE_FAILED): S.ERROR_DELETING,
    (S.AVAILABLE, ST.ROLLBACK): S.ROLLBACKING,
    (S.ERROR_ROLLBACKING, ST.ROLLBACK): S.ROLLBACKING,
    (S.ROLLBACKING, ST.ROLLED_BACK): S.AVAILABLE,
    (S.ROLLBACKING, ST.ROLLBACK_FAILED): S.ERROR_ROLLBACKING,
}

SNAPSHOT_TRANSITIONAL = frozenset({S.CREATING, S.DELETING, S.ROLLBACKING})

SNAPSHOT_MACHINE = StateMachine("snapshot", SNAPSHOT_TRANSITIONS)

# Disk statuses a snapshot may be taken in; the second set needs force.
SNAPSHOT_OF = frozenset({"available"})
SNAPSHOT_OF_FORCED = frozenset({"in-use", "attaching"})


def check_snapshot_text(name: str | None, description: str | None) -> None:
    check_text(name, "name", codes.MALFORMED_REQUEST)
    check_text(description, "description", codes.MALFORMED_REQUEST)
    if name is not None and name.startswith(RESERVED_NAME_PREFIX):
        raise InvalidInput(f"snapshot names starting with {RESERVED_NAME_PREFIX!r} are reserved for backups")


def check_can_snapshot(volume_status: str, force: bool) -> None:
    """The disk's status allows a snapshot (in-use and attaching only with force)."""
    if volume_status in SNAPSHOT_OF or (force and volume_status in SNAPSHOT_OF_FORCED):
        return
    if volume_status in SNAPSHOT_OF_FORCED:
        raise InvalidState(
            f"the disk is {volume_status}: pass \"force\": true to snapshot an attached disk "
            "(the snapshot is crash-consistent)",
            code=codes.MALFORMED_REQUEST,
        )
    raise InvalidState(
        f"cannot snapshot a disk in status {volume_status}; it must be available "
        "(or in-use with force)",
        code=codes.MALFORMED_REQUEST,
    )
