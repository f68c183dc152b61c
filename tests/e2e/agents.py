"""Standalone storage agents (`openevs agent`) as processes a test can kill and
restart on the same pool and ports: an AZ whose node really goes down."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from openevs.agent.client import HttpAgentClient
from openevs.security.pki import TlsFiles
from tests.conftest import free_port
from tests.e2e.conftest import ServeProcess
from tests.support.waiting import wait_for


class StandaloneAgent:
    """`openevs agent` for one AZ as a process the test can kill and restart."""

    def __init__(
        self, root: Path, az: str, extra_args: tuple[str, ...] = (), controller_tls: TlsFiles | None = None
    ) -> None:
        """`controller_tls`: the agent has its certificate (in `extra_args`), so its control
        API is mutual TLS and answers this controller certificate only."""
        self.root, self.az = root, az
        self.extra_args = extra_args
        self.controller_tls = controller_tls
        self.pool = root / f"pool-{az}"
        self.control_port, self.nbd_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.controller_tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.control_port}"

    def start(self) -> None:
        self.runs += 1
        log = (self.root / f"agent-{self.az}-{self.runs}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openevs.cli.main",
                "agent",
                "--az",
                self.az,
                "--pool",
                str(self.pool),
                "--listen",
                f"127.0.0.1:{self.control_port}",
                "--nbd",
                f"127.0.0.1:{self.nbd_port}",
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        client = HttpAgentClient(self.az, self.url, timeout_s=2, tls=self.controller_tls)
        wait_for(f"standalone agent {self.az} to start", lambda: _healthy(client), 30)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _healthy(client: HttpAgentClient) -> bool:
    try:
        client.health()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


@contextlib.contextmanager
def serve_with_standalone_agent(
    root: Path, az: str, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[ServeProcess, StandaloneAgent]]:
    """`openevs serve` whose AZ `az` is a standalone agent (so it can really die);
    every process is stopped at the end, also when the set-up itself fails."""
    agent = StandaloneAgent(root, az)
    serve = ServeProcess(root / "serve", extra_env={"OPENEVS_AGENT_URLS": f"{az}={agent.url}",
                                                    **(extra_env or {})})  # fmt: skip
    try:
        agent.start()
        serve.start()
        yield serve, agent
    finally:
        serve.close()
        agent.stop()
