"""The processes of the partition harness that live inside a namespace: an agent that
starts without waiting for the controller to reach it, the standalone witness, and the
probes (probe.py) that write and record from inside an AZ."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from openevs.contract import WitnessAddress
from openevs.security import pki
from openevs.security.identity import CertRole, Identity
from openevs.witness.client import WitnessClient
from tests.faults.harness import FaultAgent
from tests.faults.netlab import NetLab
from tests.support.waiting import wait_for

WITNESS_PORT = 7000
REPO = Path(__file__).resolve().parents[2]


def terminate(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to a running process; SIGKILL it if it has not ended 10 s later."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class PartitionAgent(FaultAgent):
    def start(self) -> None:
        """Start and wait until it answers (a loaded machine may take a while)."""
        self.launch()

        def healthy() -> bool:
            assert self.alive, f"agent {self.az} exited"
            with self.client(2) as client:
                client.health()
            return True

        wait_for(f"agent {self.az} to start", healthy, 90)

    def launch(self) -> None:
        """Start without waiting for health from here: the AZ may be isolated."""
        if self.alive:
            self.kill()  # never two on the same pool and ports
        self.runs += 1
        with (self.root / f"agent-{self.az}-{self.runs}.log").open("wb") as log:
            cmd = [
                *self.exec_prefix, sys.executable, "-m", "openevs.cli.main", "agent", "--az", self.az,
                "--pool", str(self.pool), "--listen", f"{self.host}:{self.control_port}",
                "--nbd", f"{self.host}:{self.nbd_port}", *self.tls_args(),
            ]  # fmt: skip
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


class NsWitness:
    """`openevs witness` inside the lab's namespace "w"; killable, restartable on its state."""

    def __init__(self, root: Path, net: NetLab, lease_s: float, pki_dir: Path) -> None:
        self.root, self.net, self.lease_s = root, net, lease_s
        # mutual TLS like every witness of a secure deployment: agents and the controller only
        self.tls = pki.issue(pki_dir, Identity(CertRole.WITNESS), ip_addresses=[net.host_w], force=True).files
        self.controller_tls = pki.files_for(pki_dir, "controller")
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def address(self) -> WitnessAddress:
        return WitnessAddress(host=self.net.host_w, port=WITNESS_PORT, name="witness")

    def client(self, side: str, timeout_s: float = 2.0) -> WitnessClient:
        tls = self.controller_tls
        return WitnessClient(self.net.host_w, WITNESS_PORT, side, timeout_s=timeout_s, tls=tls)

    def start(self, wait: bool = True) -> None:
        self.runs += 1
        cmd = [*self.net.exec_prefix("w"), sys.executable, "-m", "openevs.witness", "--listen",
               f"{self.net.host_w}:{WITNESS_PORT}", "--state", str(self.root / "witness-state"),
               "--lease-s", str(self.lease_s), "--tls-cert", str(self.tls.cert),
               "--tls-key", str(self.tls.key), "--tls-ca", str(self.tls.ca)]  # fmt: skip
        with (self.root / f"witness-{self.runs}.log").open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_for("the witness to answer", lambda: self.client("probe").ping() is None, 20)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, signal.SIGTERM)


class Probe:
    """A probe process (probe.py) inside one side's namespace; SIGTERM stops it."""

    def __init__(self, net: NetLab, side: str, mode: str, spec: dict[str, Any], root: Path) -> None:
        spec_path = root / f"{Path(spec['log']).stem}.spec.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [*net.exec_prefix(side), sys.executable, "-m", "tests.faults.probe", mode, str(spec_path)]
        with (root / f"{Path(spec['log']).stem}.err").open("wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=err, stderr=err)

    def stop(self) -> None:
        terminate(self.proc, signal.SIGTERM)
