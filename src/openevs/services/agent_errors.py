"""The one translation of agent errors into what the controller reports.

`failure_detail` is the documented failure_detail an agent error stands
for: the reconciler records it when a transition fails, and a request that
needed the agent answers 503 with it as its error code (`call_agent`).

`PassBreaker` is the reconciler's per-pass circuit breaker: once an AZ's
agent did not answer (AgentUnavailable) in a pass, every later call to it in
that pass fails at once the same way instead of waiting out its own timeout.
A 100-member group whose old primary is gone then costs one timeout per
pass, not one per member; the next pass tries the agent again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from openevs.contract import AgentError, AgentRequestFailed, AgentUnavailable
from openevs.contract_client import AgentClient
from openevs.domain import replication as rep
from openevs.domain.errors import ServiceUnavailable

if TYPE_CHECKING:
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


class PassBreaker:
    """The AZs whose agent did not answer in the current reconciler pass (`reset` at
    each pass start). Thread-safe: a step may call agents from several threads."""

    def __init__(self) -> None:
        self._down: dict[str, AgentUnavailable] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._down.clear()

    def down(self) -> set[str]:
        with self._lock:
            return set(self._down)

    def guard(self, client: AgentClient) -> AgentClient:
        """`client` whose calls fail at once while its AZ is down in this pass."""
        return cast("AgentClient", _Guarded(client, self))

    def check(self, az: str) -> None:
        with self._lock:
            first = self._down.get(az)
        if first is not None:
            raise AgentUnavailable(
                f"not called: the agent of {az} did not answer earlier in this pass: {first}"
            )

    def trip(self, az: str, exc: AgentUnavailable) -> None:
        with self._lock:
            self._down.setdefault(az, exc)


class _Guarded:
    """An AgentClient's calls through a PassBreaker (every other attribute as it is)."""

    def __init__(self, client: AgentClient, breaker: PassBreaker) -> None:
        self._client = client
        self._breaker = breaker
        self.az = client.az

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._breaker.check(self.az)
            try:
                return attr(*args, **kwargs)
            except AgentUnavailable as exc:
                self._breaker.trip(self.az, exc)
                raise

        return call
