"""Helpers of the agent integration tests: a real agent process on a unix socket
(or, given TLS files, on a loopback TCP port with mutual TLS)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

from openevs.agent.client import HttpAgentClient
from openevs.security.pki import TlsFiles
from tests.conftest import free_port
from tests.support.waiting import wait_for

T = TypeVar("T")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class AgentProcess:
    def __init__(
        self,
        root: Path,
        az: str = "az1.dc1",
        pool: Path | None = None,
        sock: Path | None = None,
        *,
        tls: TlsFiles | None = None,
        controller_tls: TlsFiles | None = None,
    ) -> None:
        self.az = az
        self.pool = pool or root / "pool"
        self.sock = sock or root / "agent.sock"
        self.log = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls, self.controller_tls = tls, controller_tls
        if tls is None:
            self.listen, self.url = f"unix:{self.sock}", f"unix:{self.sock}"
        else:
            port = free_port()
            self.listen, self.url = f"127.0.0.1:{port}", f"https://127.0.0.1:{port}"
        self.client = HttpAgentClient(az, self.url, timeout_s=5, tls=controller_tls)

    def command(self) -> list[str]:
        tls_args = [] if self.tls is None else [
            "--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key), "--tls-ca", str(self.tls.ca),
        ]  # fmt: skip
        return [
            sys.executable, "-m", "openevs.agent", "--az", self.az, "--pool", str(self.pool),
            "--listen", self.listen, "--nbd", "127.0.0.1:0", *tls_args,
        ]  # fmt: skip

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        wait_for("agent health", self.client.health)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
