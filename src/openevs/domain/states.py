"""State machines: one `StrEnum` of states and one transition table per entity.

`next_state()` is the only function that decides a next state; services save
the result with a compare-and-set on the old state. States are the exact
lowercase strings the API shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from openevs.domain.errors import InvalidState


class VolumeStatus(StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    IN_USE = "in-use"
    ATTACHING = "attaching"
    DETACHING = "detaching"
    EXTENDING = "extending"
    DELETING = "deleting"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"
    ERROR_EXTENDING = "error_extending"
    ROLLBACKING = "rollbacking"  # a snapshot's bytes are written back (snapshots)
    ERROR_ROLLBACKING = "error_rollbacking"


class VolumeTrigger(StrEnum):
    CREATED = "created"  # the agent holds the file
    CREATE_FAILED = "create_failed"
    ATTACH = "attach"  # first attachment made
    DETACH_LAST = "detach_last"  # last attachment removed
    EXTEND = "extend"
    EXTENDED_FREE = "extended_free"  # grown, no attachments
    EXTENDED_ATTACHED = "extended_attached"  # grown, still attached
    EXTEND_FAILED = "extend_failed"
    DELETE = "delete"
    DELETE_FAILED = "delete_failed"
    RESET = "reset"  # operator reset of an error state after a fix
    ROLLBACK = "rollback"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


V, VT = VolumeStatus, VolumeTrigger

VOLUME_TRANSITIONS: dict[tuple[VolumeStatus, VolumeTrigger], VolumeStatus] = {
    (V.CREATING, VT.CREATED): V.AVAILABLE,
    (V.CREATING, VT.CREATE_FAILED): V.ERROR,
    (V.AVAILABLE, VT.ATTACH): V.IN_USE,
    (V.IN_USE, VT.ATTACH): V.IN_USE,
    (V.IN_USE, VT.DETACH_LAST): V.AVAILABLE,
    (V.AVAILABLE, VT.EXTEND): V.EXTENDING,
    (V.IN_USE, VT.EXTEND): V.EXTENDING,
    (V.EXTENDING, VT.EXTENDED_FREE): V.AVAILABLE,
    (V.EXTENDING, VT.EXTENDED_ATTACHED): V.IN_USE,
    (V.EXTENDING, VT.EXTEND_FAILED): V.ERROR_EXTENDING,
    (V.AVAILABLE, VT.DELETE): V.DELETING,
    (V.ERROR, VT.DELETE): V.DELETING,
    (V.ERROR_EXTENDING, VT.DELETE): V.DELETING,
    (V.ERROR_DELETING, VT.DELETE): V.DELETING,
    (V.DELETING, VT.DELETE_FAILED): V.ERROR_DELETING,
    (V.ERROR_EXTENDING, VT.RESET): V.AVAILABLE,
    (V.AVAILABLE, VT.ROLLBACK): V.ROLLBACKING,
    (V.ERROR_ROLLBACKING, VT.ROLLBACK): V.ROLLBACKING,
    (V.ROLLBACKING, VT.ROLLED_BACK): V.AVAILABLE,
    (V.ROLLBACKING, VT.ROLLBACK_FAILED): V.ERROR_ROLLBACKING,
    (V.ERROR_ROLLBACKING, VT.DELETE): V.DELETING,
}

VOLUME_TRANSITIONAL = frozenset({V.CREATING, V.EXTENDING, V.DELETING})


class ServerStatus(StrEnum):
    ACTIVE = "ACTIVE"
    SHUTOFF = "SHUTOFF"


class ServerTrigger(StrEnum):
    START = "os-start"
    STOP = "os-stop"


SERVER_TRANSITIONS: dict[tuple[ServerStatus, ServerTrigger], ServerStatus] = {
    (ServerStatus.SHUTOFF, ServerTrigger.START): ServerStatus.ACTIVE,
    (ServerStatus.ACTIVE, ServerTrigger.STOP): ServerStatus.SHUTOFF,
}


S = TypeVar("S", bound=StrEnum)
T = TypeVar("T", bound=StrEnum)


def next_state(table: Mapping[tuple[S, T], S], entity: str, state: S | str, trigger: T) -> S:
    """Return the state after `trigger`, or raise InvalidState saying why not."""
    for (from_state, trig), to_state in table.items():
        if from_state == state and trig == trigger:
            return to_state
    allowed = sorted({str(s) for (s, t) in table if t == trigger})
    raise InvalidState(
        f"cannot {trigger} {entity} in status {state}"
        + (f" (allowed in: {', '.join(allowed)})" if allowed else "")
    )


@dataclass(frozen=True)
class StateMachine(Generic[S, T]):
    """One entity's transition table and the name its refusals use."""

    entity: str
    transitions: Mapping[tuple[S, T], S]

    def next(self, state: S | str, trigger: T) -> S:
        return next_state(self.transitions, self.entity, state, trigger)


VOLUME_MACHINE = StateMachine("volume", VOLUME_TRANSITIONS)
SERVER_MACHINE = StateMachine("server", SERVER_TRANSITIONS)
