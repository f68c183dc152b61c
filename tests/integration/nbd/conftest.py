"""A real NbdServer on 127.0.0.1 (port 0), run on an event loop in a thread of its own
so that blocking third-party clients (subprocesses) and our asyncio client can both
talk to it."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from openevs.agent.nbd.export import Export, FileExport
from openevs.agent.nbd.server import NbdServer, TlsPolicy
from openevs.security.identity import Identity

T = TypeVar("T")


class ServerThread:
    def __init__(self, tls: ssl.SSLContext | None = None, tls_policy: TlsPolicy | None = None) -> None:
        self.exports: dict[str, Export] = {}
        self.peers: list[Identity | None] = []  # who asked, lookup by lookup
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = NbdServer(self._resolve, "127.0.0.1", 0, tls=tls, tls_policy=tls_policy)

    async def _resolve(self, name: str, peer: Identity | None) -> Export | None:
        self.peers.append(peer)
        return self.exports.get(name)

    def start(self) -> None:
        self.thread.start()
        self.run(self.server.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def call(self, func: Callable[..., T], *args: Any) -> T:
        async def wrapper() -> T:
            return func(*args)

        return self.run(wrapper())

    def stop(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port

    def uri(self, name: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def nbd_server() -> Iterator[ServerThread]:
    srv = ServerThread()
    srv.start()
    yield srv
    srv.stop()
    for export in srv.exports.values():
        if isinstance(export, FileExport):
            export.close()


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.fixture
def disk(tmp_path: Path, nbd_server: ServerThread) -> tuple[str, Path]:
    """A 64 MiB sparse file served as a secret-looking export name."""
    path = sparse_file(tmp_path / "disk.img", 64 << 20)
    name = "att-" + os.urandom(8).hex()
    nbd_server.exports[name] = FileExport(path)
    return name, path
