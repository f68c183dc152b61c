"""A real `openevs witness` process for tests (killable, restartable on its state),
in plain TCP or, given TLS files, mutual TLS (probed with `probe_tls`, e.g. the controller's)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from openevs.contract import WitnessAddress
from openevs.security.pki import TlsFiles
from openevs.witness.client import WitnessClient, WitnessUnreachable
from tests.conftest import free_port


class WitnessProcess:
    def __init__(
        self,
        state: Path,
        lease_s: float = 2.0,
        *,
        tls: TlsFiles | None = None,
        probe_tls: TlsFiles | None = None,
    ) -> None:
        self.state, self.lease_s = state, lease_s
        self.tls, self.probe_tls = tls, probe_tls
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        tls_args = [] if self.tls is None else [
            "--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key), "--tls-ca", str(self.tls.ca),
        ]  # fmt: skip
        return [sys.executable, "-m", "openevs.witness", "--listen", f"127.0.0.1:{self.port}",
                "--state", str(self.state), "--lease-s", str(self.lease_s), *tls_args]  # fmt: skip

    def start(self) -> None:
        cmd = self.command()
        self.state.mkdir(parents=True, exist_ok=True)
        with (self.state.parent / f"{self.state.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                WitnessClient("127.0.0.1", self.port, "probe", timeout_s=1, tls=self.probe_tls).ping()
                return
            except WitnessUnreachable:
                assert self.proc.poll() is None, "the witness exited"
                assert time.monotonic() < deadline, "the witness did not start"
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
            self.proc = None

    def client(self, side: str, tls: TlsFiles | None = None) -> WitnessClient:
        return WitnessClient("127.0.0.1", self.port, side, timeout_s=2, tls=tls)

    @property
    def address(self) -> WitnessAddress:
        return WitnessAddress(host="127.0.0.1", port=self.port, name="witness")
