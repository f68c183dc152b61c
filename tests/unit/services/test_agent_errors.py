"""The one translation of agent errors into failure_detail codes."""

from __future__ import annotations

from typing import Any, cast

import pytest

from openevs.contract import AgentError, AgentRequestFailed, AgentUnavailable, ErrorReason
from openevs.contract_client import AgentClient
from openevs.domain import replication as rep
from openevs.services.agent_errors import PassBreaker, failure_detail


@pytest.mark.parametrize("reason", list(ErrorReason))
@pytest.mark.parametrize("primary", [True, False])
def test_failure_detail(reason: ErrorReason, primary: bool) -> None:
    got = failure_detail(AgentRequestFailed("refused", reason=reason), primary=primary)
    if reason in (ErrorReason.IO_ERROR, ErrorReason.NO_SPACE):
        assert got == (rep.FD_PRIMARY_POOL if primary else rep.FD_SECONDARY_POOL)
    else:
        assert got == rep.FD_INTERNAL


def test_unreachable_is_the_link_code() -> None:
    assert failure_detail(AgentUnavailable("down")) == rep.FD_LINK
    assert failure_detail(AgentError("other")) == rep.FD_INTERNAL


class GoneAgent:
    """An agent that never answers: every call is AgentUnavailable, and counted."""

    az = "az1.dc1"

    def __init__(self) -> None:
        self.calls = 0

    def health(self) -> None:
        self.calls += 1
        raise AgentUnavailable("connection refused")


def test_breaker_calls_a_gone_agent_once_per_pass() -> None:
    breaker, gone = PassBreaker(), GoneAgent()
    guarded: Any = breaker.guard(cast(AgentClient, gone))
    assert guarded.az == gone.az
    for _ in range(5):
        with pytest.raises(AgentUnavailable):
            guarded.health()
    assert gone.calls == 1 and breaker.down() == {"az1.dc1"}
    with pytest.raises(AgentUnavailable, match="earlier in this pass"):
        breaker.check("az1.dc1")
    breaker.check("az2.dc2")  # another AZ is not affected
    breaker.reset()  # the next pass
    with pytest.raises(AgentUnavailable):
        guarded.health()
    assert gone.calls == 2
