"""The one translation of agent errors into what the controller reports.

`failure_detail` is the documented failure_detail an agent error stands
for: the reconciler records it when a transition fails, and a request that
needed the agent answers 503 with it as its error code (`call_agent`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from openevs.contract import AgentError, AgentRequestFailed, AgentUnavailable
from openevs.contract_client import AgentClient
from openevs.domain import replication as rep
from openevs.domain.errors import ServiceUnavailable
from openevs.runtime import Runtime

T = TypeVar("T")


def failure_detail(exc: AgentError, *, primary: bool = True) -> str:
    """The failure_detail of an agent error; `primary`: the call was for the
    production side of a pair (it picks which pool's code a pool fault gets)."""
    if isinstance(exc, AgentUnavailable):
        return rep.FD_LINK
    if isinstance(exc, AgentRequestFailed) and exc.reason.pool_fault:
        return rep.FD_PRIMARY_POOL if primary else rep.FD_SECONDARY_POOL
    return rep.FD_INTERNAL


def call_agent(runtime: Runtime, az: str, fn: Callable[[AgentClient], T], *, primary: bool = True) -> T:
    """An agent call a request waits for: an agent error becomes ServiceUnavailable
    (503) with its failure_detail as the error code."""
    agent = runtime.agent(az)
    try:
        return fn(agent)
    except AgentUnavailable as exc:
        raise ServiceUnavailable(
            f"the storage agent of {az} cannot be reached: {exc}", code=failure_detail(exc)
        ) from exc
    except AgentRequestFailed as exc:
        raise ServiceUnavailable(
            f"the storage agent of {az} refused: {exc}", code=failure_detail(exc, primary=primary)
        ) from exc
