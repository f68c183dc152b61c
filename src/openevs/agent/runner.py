"""Run one storage agent as a process: the control API (uvicorn) and the NBD server.

The control socket is bound only after the pool is open and the NBD server
listens, so a `/health` answer means the agent is fully up. SIGTERM and
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
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from openevs.agent.control import create_control_app
from openevs.agent.node import StorageNode
from openevs.logs import configure_logging

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
    metrics_volumes: frozenset[str] = frozenset(),
    resync_rate_bytes_per_s: int = 0,
) -> None:
    """Serve until `stop` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = StorageNode(az, pool_dir, nbd_host, nbd_port, metrics_volumes, resync_rate_bytes_per_s)
    sock: socket.socket | None = None
    inode: int | None = None
    try:
        await agent.start()
        sock = bind_listen(listen)
        inode = _unix_inode(listen)
        config = uvicorn.Config(
            create_control_app(agent),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        log.info(
            "agent %s: control API on %s, pool %s, boot %s", az, listen, pool_dir, agent.boot_id
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
        stopped.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await agent.close()
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
    metrics_volumes: str = "", resync_rate_bytes_per_s: int = 0, log_format: str = "text",
) -> None:  # fmt: skip
    """Blocking entry point of `python -m openevs.agent` and `openevs agent`."""
    configure_logging(log_format)
    volumes = parse_metrics_volumes(metrics_volumes)
    asyncio.run(serve_agent(az, Path(pool_dir), listen, nbd_host, nbd_port, metrics_volumes=volumes,
                            resync_rate_bytes_per_s=resync_rate_bytes_per_s))  # fmt: skip
