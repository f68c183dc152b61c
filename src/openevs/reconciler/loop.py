"""The reconciler: a loop that advances every resource in a transitional status.

It wakes when the API queued work (runtime.wake) or every
`reconcile_interval_s`; each pass is idempotent, so a crash at any point
resumes on restart. Every resource kind goes through the one step driver
(reconciler/driver.py), which catches exceptions per resource.
"""

from __future__ import annotations

import logging
import threading
import time

from openevs.reconciler import groups, verify, volumes
from openevs.reconciler.agents import AgentWatcher
from openevs.reconciler.auto_failover import AutoFailover
from openevs.reconciler.drills import DRILLS, settle_drill_snapshots
from openevs.reconciler.groups import GROUPS
from openevs.reconciler.measurements import Measurements
from openevs.reconciler.replications import PAIRS
from openevs.reconciler.snapshots import SNAPSHOTS, settle_rollbacks
from openevs.reconciler.volumes import VOLUMES
from openevs.runtime import Runtime
from openevs.services.agent_errors import PassBreaker

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, runtime: Runtime) -> None:
        # An agent that did not answer is not called again in the same pass
        # (services/agent_errors.PassBreaker): one timeout per pass, not one per row.
        self.breaker = PassBreaker()
        self.runtime = runtime.with_breaker(self.breaker)
        self.watcher = AgentWatcher(self.runtime)
        self.auto_failover = AutoFailover(self.runtime)
        self.measurements = Measurements(self.runtime)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_health = 0.0

    def run_once(self) -> int:
        self.breaker.reset()
        with self.runtime.metrics.reconcile_pass.time():
            return self._pass()

    def _pass(self) -> int:
        now = time.monotonic()
        observe = now - self._last_health >= self.runtime.settings.health_interval_s
        if observe:
            self._last_health = now
            self.watcher.check()
            self.auto_failover.run()  # after the health check it reads; opt-in
        # Transitions first (a failover must not wait behind measurements),
        # then one batched measurement per agent of every pair, then groups.
        backlog = self.runtime.metrics.reconcile_backlog
        busy = 0
        kinds = ((VOLUMES, "volume"), (SNAPSHOTS, "snapshot"), (DRILLS, "drill"), (PAIRS, "pair"),
                 (GROUPS, "group"))  # fmt: skip
        for kind, name in kinds:
            seen = kind.run(self.runtime)
            backlog.labels(name).set(seen)
            busy += seen
            if kind is SNAPSHOTS:
                settle_rollbacks(self.runtime)
            if kind is DRILLS:
                settle_drill_snapshots(self.runtime)
        volumes.finish_pair_grows(self.runtime)
        busy += verify.run_verifies(self.runtime)
        if self.measurements.observe():
            busy += 1
        groups.aggregate(self.runtime, self.measurements.changed_since())
        return busy

    def run_forever(self) -> None:
        interval = self.runtime.settings.reconcile_interval_s
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("reconciler pass failed")
                self.runtime.metrics.reconcile_errors.inc()
                busy = 0
            if self._stop.is_set():
                break
            # Transitional work pending: poll fast; idle: wait for a kick.
            self.runtime.wake.wait(min(interval, 0.1) if busy else interval)
            self.runtime.wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.runtime.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
