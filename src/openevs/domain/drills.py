"""DR drills of a consistency group (an openevs extension, docs/decisions.md "DR drills").

A drill takes one crash-consistent snapshot of every DR disk of a group, at
one instant, while replication goes on, and optionally makes a disk of each
in the DR AZ; its cleanup removes them. A group has at most one drill.
"""

from __future__ import annotations

from enum import StrEnum

from openevs.domain import codes
from openevs.domain.errors import InvalidState
from openevs.domain.replication import GroupStatus, ReplicationStatus
from openevs.domain.states import StateMachine


class DrillStatus(StrEnum):
    CREATING = "creating"  # snapshots being taken, then the drill disks being made
    AVAILABLE = "available"
    ERROR = "error"
    DELETING = "deleting"  # the cleanup: drill disks, then snapshots
    ERROR_DELETING = "error_deleting"


class DrillTrigger(StrEnum):
    CREATED = "created"
    CREATE_FAILED = "create_failed"
    CLEANUP = "cleanup"
    CLEANUP_FAILED = "cleanup_failed"


D, DT = DrillStatus, DrillTrigger

DRILL_TRANSITIONS: dict[tuple[DrillStatus, DrillTrigger], DrillStatus] = {
    (D.CREATING, DT.CREATED): D.AVAILABLE,
    (D.CREATING, DT.CREATE_FAILED): D.ERROR,
    (D.AVAILABLE, DT.CLEANUP): D.DELETING,
    (D.ERROR, DT.CLEANUP): D.DELETING,
    (D.ERROR_DELETING, DT.CLEANUP): D.DELETING,
    (D.DELETING, DT.CLEANUP_FAILED): D.ERROR_DELETING,
}

DRILL_MACHINE = StateMachine("drill", DRILL_TRANSITIONS)

# A group's DR disks form one crash-consistent point in every one of these
# (inactive: the group split as one); not while an initial copy runs.
R = ReplicationStatus
DRILLABLE = frozenset({R.ACTIVE, R.ACTIVE_STOPPED, R.INACTIVE})


def check_can_drill(group_status: str, replication_status: str | None, members: int,
                    dr_azs: int = 1) -> None:  # fmt: skip
    if group_status != GroupStatus.AVAILABLE:
        raise InvalidState(
            f"a drill needs the group available, not {group_status}", code=codes.MALFORMED_REQUEST
        )
    if replication_status not in DRILLABLE:
        raise InvalidState(
            f"a drill needs the DR disks at one consistent point: replication_status is "
            f"{replication_status}, not active, active-stopped or inactive",
            code=codes.MALFORMED_REQUEST,
        )
    if members == 0:
        raise InvalidState("the group has no member pair to drill", code=codes.MALFORMED_REQUEST)
    if dr_azs > 1:
        raise InvalidState(
            f"the group's DR disks are in {dr_azs} AZs: a drill takes one instant on one DR agent, "
            "so every DR disk must be in the same AZ",
            code=codes.MALFORMED_REQUEST,
        )
