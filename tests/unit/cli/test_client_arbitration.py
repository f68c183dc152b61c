"""What `show` says in words about a pair's or group's arbitration."""

from __future__ import annotations

from typing import Any

import pytest

from openevs.api.groups import NULL_ACTIONS
from openevs.cli.client_arbitration import arbitration_words
from openevs.cli.client_groups import ACTIONS
from openevs.services.arbitration import FORCE_ACTION


def obj(**arbitration: Any) -> dict[str, Any]:
    base = {"witness": "az3.dc3 (10.0.0.3:8792)", "witness_reachable": True, "suspended": False,
            "lease": False, "outdated": False}  # fmt: skip
    return {"arbitration": {**base, **arbitration}}


def test_nothing_to_say_in_sync_or_under_static_priority() -> None:
    assert arbitration_words(obj()) is None
    assert arbitration_words({"arbitration": None}) is None
    assert arbitration_words({}) is None


def test_suspended_says_why_and_what_resumes_it() -> None:
    words = arbitration_words(obj(suspended=True, witness_reachable=False))
    assert words is not None
    assert "I/O is suspended" in words and "az3.dc3" in words and "unreachable" in words
    assert "resume as soon as the replication link or the witness is back" in words


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"outdated": True}, "gave this unit to the other side"),
        ({"witness_reachable": False}, "is unreachable"),
        ({"lease": True}, "writes alone under the lease"),
    ],
)
def test_the_other_states(fields: dict[str, Any], phrase: str) -> None:
    words = arbitration_words(obj(**fields))
    assert words is not None and phrase in words


def test_failover_force_sends_the_apis_force_action() -> None:
    assert ACTIONS["force-failover"] == FORCE_ACTION and FORCE_ACTION in NULL_ACTIONS
