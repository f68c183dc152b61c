"""Helpers of the agent integration tests: a real agent process on a unix socket."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

from openevs.agent.client import HttpAgentClient
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
        self, root: Path, az: str = "az1.dc1", pool: Path | None = None, sock: Path | None = None
    ) -> None:
        self.az = az
        self.pool = pool or root / "pool"
        self.sock = sock or root / "agent.sock"
        self.log = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = HttpAgentClient(az, f"unix:{self.sock}", timeout_s=5)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "openevs.agent", "--az", self.az, "--pool", str(self.pool),
            "--listen", f"unix:{self.sock}", "--nbd", "127.0.0.1:0",
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
