"""Every (state, trigger) pair of every transition table: allowed pairs give the
table's next state, every other pair is refused with InvalidState."""

from __future__ import annotations

import itertools
from enum import StrEnum

import pytest

from openevs.domain.drills import DRILL_TRANSITIONS, DrillStatus, DrillTrigger
from openevs.domain.errors import InvalidState
from openevs.domain.replication import (
    GROUP_TRANSITIONS,
    PAIR_TRANSITIONS,
    GroupStatus,
    GroupTrigger,
    PairStatus,
    PairTrigger,
)
from openevs.domain.snapshots import SNAPSHOT_TRANSITIONS, SnapshotStatus, SnapshotTrigger
from openevs.domain.states import (
    SERVER_TRANSITIONS,
    VOLUME_TRANSITIONS,
    ServerStatus,
    ServerTrigger,
    VolumeStatus,
    VolumeTrigger,
    next_state,
)

TABLES: list[tuple[str, dict, type[StrEnum], type[StrEnum]]] = [  # type: ignore[type-arg]
    ("volume", VOLUME_TRANSITIONS, VolumeStatus, VolumeTrigger),
    ("server", SERVER_TRANSITIONS, ServerStatus, ServerTrigger),
    ("replication pair", PAIR_TRANSITIONS, PairStatus, PairTrigger),
    ("replication consistency group", GROUP_TRANSITIONS, GroupStatus, GroupTrigger),
    ("snapshot", SNAPSHOT_TRANSITIONS, SnapshotStatus, SnapshotTrigger),
    ("drill", DRILL_TRANSITIONS, DrillStatus, DrillTrigger),
]

CASES = [
    pytest.param(entity, table, state, trigger, id=f"{entity}:{state}:{trigger}")
    for entity, table, states, triggers in TABLES
    for state, trigger in itertools.product(states, triggers)
]


@pytest.mark.parametrize(("entity", "table", "state", "trigger"), CASES)
def test_every_state_and_trigger(entity: str, table: dict, state: StrEnum, trigger: StrEnum) -> None:  # type: ignore[type-arg]
    expected = table.get((state, trigger))
    if expected is None:
        with pytest.raises(InvalidState) as info:
            next_state(table, entity, state, trigger)
        assert f"cannot {trigger} {entity} in status {state}" in str(info.value)
    else:
        assert next_state(table, entity, state, trigger) == expected


def test_documented_group_rules() -> None:
    g, t = GroupStatus, GroupTrigger
    assert next_state(GROUP_TRANSITIONS, "g", g.FAILOVERED, t.REPROTECT) == g.UPDATING
    assert next_state(GROUP_TRANSITIONS, "g", g.AVAILABLE, t.REVERSE) == g.REVERSING
    for status in (g.CREATING, g.FAILOVERED, g.ERROR, g.REVERSING):
        with pytest.raises(InvalidState):
            next_state(GROUP_TRANSITIONS, "g", status, t.REVERSE)
    for status in (g.AVAILABLE, g.CREATING, g.ERROR):
        with pytest.raises(InvalidState):
            next_state(GROUP_TRANSITIONS, "g", status, t.REPROTECT)


def test_states_are_the_api_strings() -> None:
    assert VolumeStatus.IN_USE == "in-use"
    assert GroupStatus.ERROR_FAILOVERING == "error_failovering"
    assert {s.value for s in PairStatus} == {"creating", "available", "error", "deleting", "error_deleting"}
