"""What every component of the controller shares: settings, database, agents.

Built once by the command that starts the process (`openevs serve`, `api`,
`worker`) and handed to the API app and the reconciler.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from openevs.config import Settings
from openevs.contract_client import AgentClient
from openevs.db.session import Database
from openevs.domain.errors import ServiceUnavailable
from openevs.metrics import ControllerMetrics
from openevs.security.sealing import Sealer

if TYPE_CHECKING:
    from openevs.services.agent_errors import PassBreaker


@dataclass
class Runtime:
    settings: Settings
    db: Database
    agents: dict[str, AgentClient] = field(default_factory=dict)
    # Set by the API after it queued work, so an in-process reconciler acts at once.
    wake: threading.Event = field(default_factory=threading.Event)
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)
    metrics: ControllerMetrics = field(default_factory=ControllerMetrics)
    # Seals export names and link exports in the database (security/sealing.py); the
    # commands pass the deployment's key file, the default (a key in memory) is for tests.
    sealer: Sealer = field(default_factory=Sealer.ephemeral)
    # The reconciler's view only (`with_breaker`): agent calls short-circuited per pass.
    breaker: PassBreaker | None = None

    def agent(self, az: str) -> AgentClient:
        try:
            client = self.agents[az]
        except KeyError:
            raise ServiceUnavailable(f"no storage agent is configured for AZ {az}") from None
        return client if self.breaker is None else self.breaker.guard(client)

    def with_breaker(self, breaker: PassBreaker) -> Runtime:
        """This runtime (same settings, database, agents, wake event and metrics) whose
        agent calls go through `breaker`; the API's runtime stays without one."""
        return replace(self, breaker=breaker)

    def kick(self) -> None:
        self.wake.set()

    def close(self) -> None:
        for fn in reversed(self.on_shutdown):
            fn()
        for client in self.agents.values():
            client.close()
        self.db.dispose()
