"""`AgentSupervisor`: the embedded agents of `openevs serve`, one child process per AZ.

Rules it keeps:

- a child dies with serve, even when serve is SIGKILLed (PR_SET_PDEATHSIG);
  the signal follows the *thread* that forked, so every child is spawned by
  the supervisor's own long-lived monitor thread;
- an agent left by an earlier run (its pid in `<data_dir>/agents/<az>.pid`
  and `openevs.agent` plus its pool in /proc/<pid>/cmdline) is stopped
  before a new one starts, so two agents never share one pool;
- a crashed child is restarted with exponential backoff (0.25 s doubling to
  30 s, reset once a child has lived for a minute);
- logs go to `<data_dir>/agents/<az>.log`;
- a child's control socket is a unix socket of mode 0600 (its protection:
  only serve's user connects), so a child never inherits a standalone
  agent's `OPENEVS_AGENT_TLS_*` settings.

AZs listed in `settings.agent_urls` are standalone agents: no child, only a
client to that URL.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from openevs.agent.client import HttpAgentClient
from openevs.config import Settings
from openevs.contract import AgentHealth, AgentUnavailable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
POLL_S = 0.1
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # parent died before prctl took effect
            os._exit(1)

    return preexec


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("OPENEVS_AGENT_TLS_")}


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        try:  # a zombie still has /proc/<pid>; reap it if it is our child
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
        except ChildProcessError:
            stat = Path(f"/proc/{pid}/stat")
            with contextlib.suppress(OSError):
                if ") Z" in stat.read_text():
                    return True
        time.sleep(0.05)
    return False


def kill_stale_agent(pid_file: Path, pool_dir: Path, timeout_s: float = 5.0) -> int | None:
    """Stop the agent recorded in pid_file if it still runs on pool_dir; return its pid."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = _cmdline(pid)
    if "openevs.agent" not in cmdline or str(pool_dir) not in cmdline:
        return None  # gone, or the pid now belongs to something else
    log.warning("stopping stale agent pid %d on %s", pid, pool_dir)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, timeout_s)
    return pid


def control_socket_path(agent_dir: Path, az: str) -> Path:
    """`<agent_dir>/<az>.sock`, or a short private path when that exceeds AF_UNIX's limit."""
    sock = agent_dir.resolve() / f"{az}.sock"
    if len(os.fsencode(sock)) <= _MAX_UNIX_PATH:
        return sock
    digest = hashlib.sha256(os.fsencode(agent_dir.resolve())).hexdigest()[:16]
    short_dir = Path(tempfile.gettempdir()) / f"openevs-{os.getuid()}-{digest}"
    short_dir.mkdir(mode=0o700, exist_ok=True)
    if short_dir.stat().st_uid != os.getuid():
        raise PermissionError(f"{short_dir} belongs to another user")
    return short_dir / f"{az}.sock"


@dataclass
class _Child:
    az: str
    command: list[str]
    pool_dir: Path
    pid_file: Path
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = BACKOFF_INITIAL_S
    restart_at: float | None = None
    restarts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _pki_args(settings: Settings, az: str) -> list[str]:
    """`--pki` when the deployment PKI holds this agent's certificate (agent/nbd_tls.py):
    its NBD port then offers TLS (optional on loopback) and its link is mutual TLS."""
    pki_dir = settings.pki_dir().resolve()
    return ["--pki", str(pki_dir)] if (pki_dir / f"agent-{az}.pem").is_file() else []


class AgentSupervisor:
    """Starts, watches and stops the embedded agents; hands out their clients."""

    def __init__(self, settings: Settings, *, client_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self._children: dict[str, _Child] = {}
        self._clients: dict[str, HttpAgentClient] = {}
        agent_dir = settings.agent_dir()
        for index, az in enumerate(settings.azs):
            if az in settings.agent_urls:
                self._clients[az] = HttpAgentClient(
                    az, settings.agent_urls[az], timeout_s=client_timeout_s, tls=settings.control_tls_files()
                )
                continue
            port = settings.nbd_port_base + index if settings.nbd_port_base else 0
            sock = control_socket_path(agent_dir, az)
            pool = settings.pool_dir(az).resolve()
            self._children[az] = _Child(
                az=az,
                command=[
                    sys.executable,
                    "-m",
                    "openevs.agent",
                    "--az",
                    az,
                    "--pool",
                    str(pool),
                    "--listen",
                    f"unix:{sock.resolve()}",
                    "--nbd",
                    f"{settings.nbd_host}:{port}",
                    *self._witness_args(index, az),
                    *_pki_args(settings, az),
                    "--metrics-volumes",
                    settings.metrics_volumes,
                    "--resync-rate",
                    str(settings.resync_rate_bytes_per_s),
                    "--log-format",
                    settings.log_format,
                ],
                pool_dir=pool,
                pid_file=agent_dir / f"{az}.pid",
                log_file=agent_dir / f"{az}.log",
            )
            self._clients[az] = HttpAgentClient(
                az, f"unix:{sock.resolve()}", timeout_s=client_timeout_s
            )
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None

    def _witness_args(self, index: int, az: str) -> list[str]:
        """Every embedded agent also serves a witness, for the pairs of the other AZs."""
        settings = self.settings
        if not settings.embedded_witnesses or settings.witness:
            return []
        return [
            "--witness-listen", f"{settings.nbd_host}:{settings.embedded_witness_port(index)}",
            "--witness-state", str(settings.witness_dir(az).resolve()),
            "--witness-lease-s", str(settings.witness_lease_s),
        ]  # fmt: skip

    # -- public -----------------------------------------------------------

    @property
    def azs(self) -> list[str]:
        return list(self._clients)

    def client_for(self, az: str) -> HttpAgentClient:
        try:
            return self._clients[az]
        except KeyError:
            raise KeyError(f"no agent for availability zone {az!r}") from None

    def pid(self, az: str) -> int | None:
        child = self._children.get(az)
        proc = child.process if child else None
        return proc.pid if proc is not None and proc.poll() is None else None

    def restarts(self, az: str) -> int:
        return self._children[az].restarts

    def start(self) -> None:
        """Spawn every embedded agent (from the monitor thread) and return once spawned."""
        if self._thread is not None:
            return
        self.settings.agent_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        self._thread = threading.Thread(target=self._run, name="agent-supervisor", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def wait_ready(self, timeout_s: float = 30.0) -> dict[str, AgentHealth]:
        """Wait until every agent answers /health; raise TimeoutError naming the others."""
        deadline = time.monotonic() + timeout_s
        ready: dict[str, AgentHealth] = {}
        while True:
            for az, client in self._clients.items():
                if az not in ready:
                    with contextlib.suppress(AgentUnavailable):
                        ready[az] = client.health()
            if len(ready) == len(self._clients):
                return ready
            if time.monotonic() >= deadline:
                missing = sorted(set(self._clients) - set(ready))
                logs = [str(self._children[az].log_file) for az in missing if az in self._children]
                raise TimeoutError(
                    f"agents not ready after {timeout_s}s: {', '.join(missing)}"
                    + (f" (see {', '.join(logs)})" if logs else "")
                )
            time.sleep(POLL_S)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every child, SIGKILL what is left after timeout_s, close clients."""
        self._stopping.set()
        children = list(self._children.values())
        for child in children:
            with child.lock:
                if child.process is not None and child.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.terminate()
        deadline = time.monotonic() + timeout_s
        for child in children:
            with child.lock:
                proc = child.process
                if proc is None:
                    continue
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("agent %s did not stop in %.0fs, killing it", child.az, timeout_s)
                    proc.kill()
                    proc.wait()
                child.pid_file.unlink(missing_ok=True)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        for client in self._clients.values():
            client.close()

    # -- monitor thread -----------------------------------------------------

    def _run(self) -> None:
        try:
            for child in self._children.values():
                kill_stale_agent(child.pid_file, child.pool_dir)
                self._spawn(child)
        except BaseException as exc:  # reported to start()'s caller
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        while not self._stopping.wait(POLL_S):
            for child in self._children.values():
                try:
                    self._watch(child)
                except Exception:  # top of the loop: keep supervising the others
                    log.exception("supervising agent %s failed", child.az)

    def _watch(self, child: _Child) -> None:
        with child.lock:
            if self._stopping.is_set() or child.process is None:
                return
            now = time.monotonic()
            code = child.process.poll()
            if code is None:
                if now - child.started_at > STABLE_AFTER_S:
                    child.backoff_s = BACKOFF_INITIAL_S
                return
            if child.restart_at is None:
                child.restart_at = now + child.backoff_s
                log.error(
                    "agent %s (pid %d) exited with %s; restarting in %.2fs",
                    child.az,
                    child.process.pid,
                    code,
                    child.backoff_s,
                )
                child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)
                return
            if now >= child.restart_at:
                child.restart_at = None
                child.restarts += 1
                self._spawn_locked(child)

    def _spawn(self, child: _Child) -> None:
        with child.lock:
            self._spawn_locked(child)

    def _spawn_locked(self, child: _Child) -> None:
        child.pool_dir.mkdir(parents=True, exist_ok=True)
        with child.log_file.open("ab") as log_fh:
            child.process = subprocess.Popen(
                child.command,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig_preexec(os.getpid()),  # noqa: PLW1509
                start_new_session=True,  # a terminal's Ctrl-C reaches serve, which stops us
                close_fds=True,
            )
        child.started_at = time.monotonic()
        tmp = child.pid_file.with_name(f".{child.pid_file.name}.tmp")
        tmp.write_text(f"{child.process.pid}\n")
        os.replace(tmp, child.pid_file)
        log.info("agent %s started, pid %d", child.az, child.process.pid)
