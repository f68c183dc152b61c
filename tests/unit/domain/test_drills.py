"""Which groups a drill may start on (domain/drills.check_can_drill)."""

from __future__ import annotations

import pytest

from openevs.domain.drills import check_can_drill
from openevs.domain.errors import InvalidState


@pytest.mark.parametrize("replication_status", ["active", "active-stopped", "inactive"])
def test_a_drill_starts_on_an_available_group_at_one_point(replication_status: str) -> None:
    check_can_drill("available", replication_status, 2, 1)


@pytest.mark.parametrize(
    ("status", "replication_status", "members", "dr_azs", "says"),
    [
        ("failovered", "active-stopped", 2, 1, "group available"),
        ("updating", "active", 2, 1, "group available"),
        ("available", "copying", 2, 1, "one consistent point"),
        ("available", "error", 2, 1, "one consistent point"),
        ("available", None, 2, 1, "one consistent point"),
        ("available", "active", 0, 1, "no member"),
        ("available", "active", 2, 2, "same AZ"),
    ],
)
def test_a_drill_is_refused_with_a_reason(
    status: str, replication_status: str | None, members: int, dr_azs: int, says: str
) -> None:
    with pytest.raises(InvalidState) as refused:
        check_can_drill(status, replication_status, members, dr_azs)
    assert says in str(refused.value)
