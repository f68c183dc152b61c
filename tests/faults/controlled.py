"""The partition harness with the real controller: `openevs serve` drives the agents.

`ControlledStack` is a PartitionStack plus `openevs serve` in the root
namespace (side "h"), configured with the standalone witness of namespace
"w" (OPENEVS_WITNESS), the agents of the two AZs (OPENEVS_AGENT_URLS), a
short suspend timeout, and automatic failover on or off. A
`ControlledTrial` makes its group through the API (disks, pairs, a group,
servers attached for the exports), fails over and reprotects through the
API (or waits for the automatic failover), and leaves re-sending roles
after an agent restart to the controller. The controller itself can be
SIGKILLed and restarted (kill target "h"). Probes, history and checker are
the base Trial's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from openevs.security import pki
from tests.e2e.conftest import ServeProcess, Session
from tests.faults.harness import AZ_A, AZ_B, group_action, make_group, regrant
from tests.faults.nsprocs import WITNESS_PORT
from tests.faults.partitions import PartitionStack, Trial
from tests.support.api import wait_group
from tests.support.waiting import wait_for

FAILOVER = "os-failover-replication-consistency-group"
REPROTECT = "os-reprotect-replication-consistency-group"


class ControlledStack(PartitionStack):
    def __init__(self, root: Path, *, auto_failover: bool = False, auto_failover_after_s: float = 2.0,
                 suspend_timeout_s: float = 3.0, lease_s: float = 2.0) -> None:  # fmt: skip
        super().__init__(root, lease_s)
        self.auto_failover = auto_failover
        self.suspend_timeout_s = suspend_timeout_s
        urls = ",".join(f"{a.az}={a.url}" for a in self.agents.values())
        controller = pki.files_for(self.pki_dir, "controller")
        self.serve = ServeProcess(root / "serve", extra_env={
            "OPENEVS_AGENT_URLS": urls,
            "OPENEVS_CONTROL_TLS_CERT": str(controller.cert),
            "OPENEVS_CONTROL_TLS_KEY": str(controller.key),
            "OPENEVS_CONTROL_TLS_CA": str(controller.ca),
            "OPENEVS_AGENT_TIMEOUT_S": "60",
            "OPENEVS_WITNESS": f"{self.net.host_w}:{WITNESS_PORT}",
            "OPENEVS_SUSPEND_IO_TIMEOUT_S": str(suspend_timeout_s),
            "OPENEVS_AUTO_FAILOVER": "true" if auto_failover else "false",
            "OPENEVS_AUTO_FAILOVER_AFTER_S": str(auto_failover_after_s),
        })  # fmt: skip
        self._session: Session | None = None

    def start(self) -> ControlledStack:
        super().start()
        self.serve.start(wait=False)
        self.serve.wait_ready(timeout_s=180)  # a loaded machine may take a while
        return self

    def ensure_up(self) -> None:
        super().ensure_up()
        if self.serve.running:
            try:
                wait_for("the controller to answer", self.serve.login, 10)
                return
            except AssertionError:
                self.kill("h")  # running but not answering: start it again
        self.serve.start(wait=False)
        self.serve.wait_ready(timeout_s=180)
        self._session = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self.serve.login()
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.client.close()
        self.serve.close()
        super().close()

    def kill(self, side: str) -> None:
        """SIGKILL; the controller with its embedded agent (unused here: its AZ holds no
        disk of the trials), as when the controller's host dies."""
        if side != "h":
            super().kill(side)
            return
        assert self.serve.proc is not None
        children = subprocess.run(["pgrep", "-P", str(self.serve.proc.pid)], capture_output=True, text=True)
        self.serve.kill()
        for pid in children.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def restart(self, side: str, trial: Trial) -> bool:
        """Start it again; the controller re-sends an agent's roles by itself."""
        if side == "h":
            self.serve.start(wait=False)
            wait_for("the controller back", self.serve.login, 180)
        elif side == "w":
            self.witness.start(wait=False)
        else:
            self.agents[side].launch()
        return True

    def trial(self, arbitrated: bool = True, n_pairs: int = 2, suspend_timeout_s: float = 3.0) -> Trial:
        assert arbitrated, "the controller arbitrates every pair when it has a witness"
        self.trials += 1
        return ControlledTrial(self, self.trials, True, n_pairs, self.suspend_timeout_s)


def _retrying(fn: Any) -> Any:
    """The API may be restarting (a controller kill): ask again until it answers."""
    return wait_for("the API to answer", lambda: fn() or True, 120)


class ControlledTrial(Trial):
    stack: ControlledStack

    def setup(self, record: bool = True) -> Trial:
        s = self.stack.session
        self.group, couples = make_group(s, len(self.pairs))
        self.pairs = {c.pair_id: (c.prod, c.dr) for c in couples}
        self.exports = {c.prod: c.prod_addr[2] for c in couples}
        self.links = {}
        if record:
            self.start_recorders()
        return self

    def push_roles(self, side: str) -> None:
        """The controller does it (reconciler/agents.py)."""

    def _group(self, pred: Any, timeout_s: float = 90) -> dict[str, Any]:
        return _retrying(lambda: wait_group(self.stack.session, self.group, pred, timeout_s))  # type: ignore[no-any-return]

    def wait_active(self, side: str, timeout_s: float = 90) -> None:
        self._group(lambda g: g["status"] == "available" and g["replication_status"] == "active", timeout_s)

    def failover(self, timeout_s: float = 180) -> float:
        """The operator's failover through the API, or (automatic failover on) the
        controller's own; returns when the group is failovered and the DR disks granted."""
        s = self.stack.session
        if not self.stack.auto_failover:
            # Refused (409 for a live lease) or the controller restarting: the operator asks again.
            wait_for("the failover to be accepted",
                     lambda: group_action(self.stack.session, self.group, FAILOVER, expect=None) == 200,
                     timeout_s, interval_s=0.5)  # fmt: skip
        self._group(lambda g: g["status"] == "failovered" and g["priority_station"] == AZ_B, timeout_s)
        promoted = time.monotonic()
        for _, dr in self.pairs.values():
            self.exports[dr] = _retrying(lambda dr=dr: regrant(s, dr))[2]
        self.primary = "b"
        self.failovers += 1
        return promoted

    def reprotect(self, timeout_s: float = 90) -> None:
        _retrying(lambda: group_action(self.stack.session, self.group, REPROTECT))
        self.wait_active("b", timeout_s)

    def cleanup(self) -> None:
        """Disks stay (the controller's rows own them); the next trial makes its own."""


__all__ = ["AZ_A", "ControlledStack", "ControlledTrial"]
