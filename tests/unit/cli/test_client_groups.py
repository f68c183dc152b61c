"""`openevs group --wait`: the end state each operation waits for, what counts
as failed, and the progress shown (pure functions, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from openevs.cli.client_groups import WAIT_GOALS, group_percent, group_problem, group_status


def g(status: str, replication: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"status": status, "replication_status": replication, **extra}


@pytest.mark.parametrize(
    ("operation", "group", "done"),
    [
        ("create", g("creating"), False),
        ("create", g("available", "active"), True),
        ("update", g("updating", "inactive"), False),
        ("update", g("available", "inactive"), True),
        ("pause", g("available", "active"), False),
        ("pause", g("available", "active-stopped"), True),
        ("pause", g("available", "inactive"), True),
        ("sync", g("available", "copying"), False),
        ("sync", g("available", "inactive"), False),
        ("sync", g("available", "active"), True),
        ("switchover", g("reversing", "active"), False),
        ("switchover", g("available", "active"), True),
        ("failover", g("failovering", "active"), False),
        ("failover", g("failovered", "active-stopped"), True),
        ("reprotect", g("updating", "inactive"), False),
        ("reprotect", g("available", "copying"), False),
        ("reprotect", g("available", "active"), True),
        ("delete", g("deleting"), False),
        ("delete", None, True),
    ],
)
def test_wait_goals(operation: str, group: dict[str, Any] | None, done: bool) -> None:
    assert WAIT_GOALS[operation](group) is done


def test_problem_names_failure_detail() -> None:
    assert group_problem(g("available", "active")) is None
    problem = group_problem(g("error_failovering", "active", failure_detail="37100043"))
    assert problem is not None and "error_failovering" in problem and "37100043" in problem
    assert group_problem(g("available", "error")) is not None


def test_progress_bar_follows_copying() -> None:
    assert group_percent(g("available", "copying", progress="42")) == 42.0
    assert group_percent(g("available", "copying", progress=None)) == 0.0
    assert group_percent(g("available", "active", progress="100")) == 100.0
    assert group_percent(g("available", "inactive")) is None
    assert group_status(g("available", "copying", progress="42")) == "available / copying 42%"
