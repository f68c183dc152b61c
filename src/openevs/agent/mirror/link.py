"""The replication link: a few NBD connections to the DR volume's link export.

`PeerLink` is up when every connection of its pool is open. Any failed or
timed-out request (a black-holed link counts as down after
`request_timeout_s`) takes the whole link down at once: every connection is
aborted and `on_down` is called synchronously, before the failing request's
caller sees the error, so the caller's decision (mark dirty, split the
group) happens in the same event-loop step. While `want_up`, a reconnect
loop retries with a short backoff and calls `on_up` when the link is back.

With `tls` (the agent's mutual-TLS client context, agent/nbd_tls.py) every
connection does NBD_OPT_STARTTLS and goes on only if the peer's
certificate is `agent:<peer.az>` (any agent when the peer's AZ is not
known); a refused peer is a failed connection like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from time import perf_counter

from openevs.agent.mirror.stats import MIRROR_STATS
from openevs.agent.nbd.client import NbdClient
from openevs.contract import Peer
from openevs.security.identity import CertRole
from openevs.security.tls import require_peer

log = logging.getLogger(__name__)

CONNECTIONS = 4
REQUEST_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
BACKOFF_S = (0.25, 0.5, 1.0)


SESSION_SEP = "~"  # link export name ~ session id


class LinkDown(Exception):
    """The request did not reach the peer; the link is down now."""


class _LinkClient(NbdClient):
    def abort(self, reason: str = "link aborted") -> None:
        """Drop the connection now, failing every pending request (no DISC, no wait)."""
        super().abort(reason)


class PeerLink:
    def __init__(
        self,
        label: str,
        peer: Peer,
        *,
        on_up: Callable[[PeerLink], None],
        on_down: Callable[[PeerLink, str], None],
        min_size_bytes: Callable[[], int] = lambda: 0,
        connections: int = CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.label = label
        self._tls = tls
        self.peer = peer
        self._on_up = on_up
        self._on_down = on_down
        self._min_size_bytes = min_size_bytes
        self._count = connections
        self.request_timeout_s = request_timeout_s
        self._clients: list[_LinkClient] = []
        self._next = itertools.count()
        self.up = False
        self.generation = 0  # bumped at every (re)connection
        self.last_error = ""
        self.peer_size_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._wake = asyncio.Event()

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._keep_up())

    async def close(self) -> None:
        self._closed = True
        self._drop("link closed", notify=False)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def mark_down(self, reason: str) -> None:
        """Take the link down now (synchronously) and let the loop reconnect."""
        self._drop(reason, notify=True)

    def received(self, generation: int) -> bool:
        """True when the connection that carried a request of `generation` is still up,
        so the peer still holds what it acknowledged then (in its page cache)."""
        return self.up and self.generation == generation

    def _drop(self, reason: str, *, notify: bool) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            client.abort()
        was_up, self.up = self.up, False
        if reason:
            self.last_error = reason
        self._wake.set()
        if was_up:
            log.warning("replication link %s down: %s", self.label, reason)
            if notify:
                self._on_down(self, reason)

    async def _keep_up(self) -> None:
        attempt = 0
        while not self._closed:
            if self.up:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._connect()
            except Exception as exc:
                self.last_error = f"cannot connect to {self.peer.host}:{self.peer.port}: {exc}"
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                await asyncio.sleep(delay)
                continue
            attempt = 0
            if self._closed:
                return
            self.up = True
            self.generation += 1
            self.last_error = ""
            log.info("replication link %s up", self.label)
            self._on_up(self)

    async def _connect(self) -> None:
        clients: list[_LinkClient] = []
        # Every (re)connection is a new link session: the secondary closes the
        # connections of older sessions when the first one of a new session
        # arrives, so a write stuck in an old connection (a black-holed link
        # that comes back, TCP retransmitting) can never land after the resync.
        name = f"{self.peer.export}{SESSION_SEP}{secrets.token_hex(6)}"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                for _ in range(self._count):
                    client = await _LinkClient.connect(self.peer.host, self.peer.port, name, tls=self._tls)
                    assert isinstance(client, _LinkClient)
                    clients.append(client)
                    if client.ssl_object is not None:
                        require_peer(client.ssl_object, CertRole.AGENT, self.peer.az or None)
                    if client.read_only:
                        raise ConnectionError("the peer's link export is read-only")
        except BaseException:
            for client in clients:
                client.abort()
            raise
        self.peer_size_bytes = clients[0].size_bytes
        wanted = self._min_size_bytes()
        if self.peer_size_bytes < wanted:
            for client in clients:
                client.abort()
            raise ConnectionError(
                f"the peer volume is smaller ({self.peer_size_bytes} bytes) than this one"
                f" ({wanted} bytes): grow it first"
            )
        self._clients = clients

    # -- requests ---------------------------------------------------------

    def _client(self) -> _LinkClient:
        if not self.up or not self._clients:
            raise LinkDown(self.last_error or "link is down")
        return self._clients[next(self._next) % len(self._clients)]

    async def _call(
        self, what: str, make: Callable[[_LinkClient], Awaitable[None]], length_bytes: int = 0
    ) -> None:
        client = self._client()
        started = perf_counter()
        # A timer, not asyncio.timeout(): the NBD server may run this coroutine
        # eagerly, outside any task. On expiry the whole link is aborted, which
        # fails this request (and every other one in flight) at once.
        timer = asyncio.get_running_loop().call_later(self.request_timeout_s, self._expired, client, what)
        try:
            await make(client)
        except Exception as exc:
            reason = f"{what} failed: {exc or type(exc).__name__}"
            if client in self._clients:
                self.mark_down(reason)
            raise LinkDown(self.last_error or reason) from exc
        finally:
            timer.cancel()
        MIRROR_STATS.link[what].observe(length_bytes, perf_counter() - started)

    def _expired(self, client: _LinkClient, what: str) -> None:
        if client in self._clients:
            self.mark_down(f"{what}: no answer from the peer within {self.request_timeout_s:g} s")

    def start_write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool
    ) -> asyncio.Future[object]:
        """Send a WRITE now, without a task; the future of the peer's answer.

        Raises LinkDown at once when the link is down. When the request fails,
        the link is taken down (`on_down` runs) before anyone awaiting the
        future resumes: the callback below is registered first, and a future's
        callbacks run in order. `data` must stay unchanged until it is done.
        """
        client = self._client()
        started = perf_counter()
        try:
            future = client.start_write(offset, data, fua)
        except Exception as exc:
            reason = f"write failed: {exc or type(exc).__name__}"
            if client in self._clients:
                self.mark_down(reason)
            raise LinkDown(self.last_error or reason) from exc
        timer = asyncio.get_running_loop().call_later(self.request_timeout_s, self._expired, client, "write")

        def done(f: asyncio.Future[object]) -> None:
            timer.cancel()
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                if client in self._clients:
                    self.mark_down(f"write failed: {exc or type(exc).__name__}")
                return
            seconds = perf_counter() - started
            MIRROR_STATS.link["write"].observe(len(data), seconds)
            MIRROR_STATS.forwarded.observe(len(data), seconds)

        if future.done():
            done(future)  # failed while sending: down now, before anyone awaits it
        else:
            future.add_done_callback(done)
        return future

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        await self._call("write", lambda c: c.write(offset, data, fua=fua), len(data))

    async def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        await self._call("write_zeroes", lambda c: c.write_zeroes(offset, length, fua=fua), length)

    async def trim(self, offset: int, length: int, fua: bool = False) -> None:
        await self._call("trim", lambda c: c.trim(offset, length, fua=fua), length)

    async def flush(self) -> None:
        await self._call("flush", lambda c: c.flush())
