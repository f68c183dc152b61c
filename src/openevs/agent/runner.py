"""Run one storage agent as a process: the control API (uvicorn) and the NBD server.

The control socket is bound only after the pool is open and the NBD server
listens, so a `/health` answer means the agent is fully up. On TCP the
control API is mutual TLS (control_tls.py) whenever the agent has TLS
files, and it must have them unless it listens on loopback only; a unix
socket (the embedded agents of `openevs serve`) is protected by its 0600
mode instead. Certificate, key and CA files are re-read when they change
(security/reloading.py), so a rotation needs no restart. SIGTERM and
SIGINT stop it cleanly: stop accepting, close NBD connections and exports,
remove the unix socket. The pid is written nowhere (the supervisor does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from openevs.agent.control import create_control_app
from openevs.agent.control_tls import PeerCheckedH11Protocol
from openevs.agent.nbd_tls import AgentTls
from openevs.agent.node import StorageNode
from openevs.agent.resources import quiet_accept_errors, raise_nofile_limit
from openevs.domain.addresses import is_loopback
from openevs.logs import configure_logging
from openevs.security import PkiError
from openevs.security.pki import TlsFiles
from openevs.security.reloading import ReloadingServerContext
from openevs.witness.arbiter import DEFAULT_LEASE_S
from openevs.witness.server import WitnessServer

log = logging.getLogger(__name__)


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{what} must look like HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def bind_listen(listen: str) -> socket.socket:
    """A listening socket for `unix:/path.sock` (mode 0600) or `HOST:PORT`."""
    if listen.startswith("unix:"):
        path = Path(listen[len("unix:") :])
        if not path.name:
            raise ValueError(f"listen {listen!r} names no socket path")
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # left by a dead agent; a live one was stopped by the supervisor
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
    else:
        host, port = parse_hostport(listen, "listen")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class WitnessOptions:
    """The witness an agent serves besides its pool (`--witness-listen`, `--witness-state`)."""

    def __init__(self, host: str, port: int, state_dir: Path, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.host, self.port, self.state_dir, self.lease_s = host, port, Path(state_dir), lease_s


def check_listen_security(listen: str, tls: TlsFiles | None) -> None:
    """Refuse a control API that anyone on the network could reach without a credential."""
    if tls is not None or listen.startswith("unix:"):
        return
    host, _port = parse_hostport(listen, "listen")
    if not is_loopback(host):
        raise PkiError(
            f"{listen} would answer anyone who reaches it: give this component its certificate "
            "(--tls-cert, --tls-key and --tls-ca), or listen on loopback"
        )


def _tls_options(tls: TlsFiles | None) -> dict[str, Any]:
    if tls is None:
        return {}
    reloading = ReloadingServerContext(tls)
    return {
        "http": PeerCheckedH11Protocol,
        "ssl_context_factory": lambda _config, _default: reloading.context,
    }


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: `serve_agent` owns SIGTERM/SIGINT.

    (uvicorn re-raises a caught signal after serving, which would kill the
    process before the NBD server and exports are closed.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_agent(
    az: str,
    pool_dir: Path,
    listen: str,
    nbd_host: str = "127.0.0.1",
    nbd_port: int = 0,
    *,
    stop: asyncio.Event | None = None,
    witness: WitnessOptions | None = None,
    tls: AgentTls | None = None,
    metrics_volumes: frozenset[str] = frozenset(),
    resync_rate_bytes_per_s: int = 0,
) -> None:
    """Serve until `stop` is set or SIGTERM/SIGINT arrives (with `witness`: also a
    witness for the pairs of other AZs, on its own port and state directory).

    `tls`: the agent's certificate, for its NBD port and link, its witness and
    its calls to witnesses, and its control API when that is on TCP (on a unix
    socket, mode 0600 is the credential)."""
    files = tls.files if tls is not None else None
    check_listen_security(listen, files)
    # unusable files stop the agent before it opens anything
    tls_options = _tls_options(None if listen.startswith("unix:") else files)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    quiet_accept_errors(loop)
    agent = StorageNode(
        az, pool_dir, nbd_host, nbd_port,
        tls=tls, metrics_volumes=metrics_volumes, resync_rate_bytes_per_s=resync_rate_bytes_per_s,
    )  # fmt: skip
    agent.fd_limits = raise_nofile_limit()
    sock: socket.socket | None = None
    inode: int | None = None
    witness_server: WitnessServer | None = None
    try:
        if witness is not None:
            witness_server = WitnessServer(
                witness.state_dir, witness.host, witness.port, witness.lease_s, tls=files
            )
            await witness_server.start()
            agent.witness_port = witness_server.port
        await agent.start()
        sock = bind_listen(listen)
        inode = _unix_inode(listen)
        config = uvicorn.Config(
            create_control_app(agent),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            **tls_options,
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        log.info(
            "agent %s: control API on %s%s, pool %s, boot %s, descriptors %d (hard %d)",
            az, listen, " (mutual TLS)" if tls_options else "", pool_dir, agent.boot_id, *agent.fd_limits,
        )  # fmt: skip
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
        stopped.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await agent.close()
        if witness_server is not None:
            await witness_server.close()
        if sock is not None:
            _remove_unix_socket(sock, listen, inode)
        log.info("agent %s: stopped", az)


def _unix_inode(listen: str) -> int | None:
    if not listen.startswith("unix:"):
        return None
    return os.lstat(listen[len("unix:") :]).st_ino


def _remove_unix_socket(sock: socket.socket, listen: str, inode: int | None) -> None:
    """Remove our socket file, unless a newer agent has bound the path since."""
    if inode is not None:
        path = listen[len("unix:") :]
        with contextlib.suppress(OSError):
            if os.lstat(path).st_ino == inode:
                os.unlink(path)
    sock.close()


def parse_metrics_volumes(value: str) -> frozenset[str]:
    """`--metrics-volumes`: volume ids, comma-separated, or "all"."""
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def run_agent(
    az: str, pool_dir: Path, listen: str, nbd_host: str = "127.0.0.1", nbd_port: int = 0,
    *, witness: WitnessOptions | None = None, tls: AgentTls | None = None, metrics_volumes: str = "",
    resync_rate_bytes_per_s: int = 0, log_format: str = "text",
) -> None:  # fmt: skip
    """Blocking entry point of `python -m openevs.agent` and `openevs agent`."""
    configure_logging(log_format)
    volumes = parse_metrics_volumes(metrics_volumes)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(
            serve_agent(
                az, Path(pool_dir), listen, nbd_host, nbd_port, witness=witness, tls=tls,
                metrics_volumes=volumes, resync_rate_bytes_per_s=resync_rate_bytes_per_s,
            )
        )  # fmt: skip


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`OPENEVS_EVENT_LOOP=uvloop` runs the agent on uvloop when it is installed (measured
    in bench/replication.py, see docs/decisions.md); asyncio's own loop otherwise."""
    if os.environ.get("OPENEVS_EVENT_LOOP", "asyncio") != "uvloop":
        return None
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # optional, not a dependency
    except ImportError:
        log.warning("OPENEVS_EVENT_LOOP=uvloop but uvloop is not installed: asyncio's loop")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
