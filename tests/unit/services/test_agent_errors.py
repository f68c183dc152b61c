"""The one translation of agent errors into failure_detail codes."""

from __future__ import annotations

import pytest

from openevs.contract import AgentError, AgentRequestFailed, AgentUnavailable, ErrorReason
from openevs.domain import replication as rep
from openevs.services.agent_errors import failure_detail


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
