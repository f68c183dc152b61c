"""The link from this agent to one peer agent: a few connections every pair shares.

`LinkPool` keeps CONNECTIONS connections (wire.py's protocol, upgraded from
NBD) to one peer agent, whatever the number of pairs with it; `LinkPools`
hands out one pool per peer address and closes it when its last pair
leaves. Link health is the pool's, not a pair's: a request that gets no
answer within `request_timeout_s` (a black-holed link) or a connection that
breaks takes the whole pool down at once, and every pair on it is told
synchronously (`PeerLink._pool_down`) before any failed request's caller
resumes. While pairs use it, one loop per pool reconnects with a short
backoff and (re)opens the pairs' handles: there is no timer per pair.

Connections are made in one place, `open_link_connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, cast

from openevs.agent.mirror import wire
from openevs.agent.mirror.outbox import Outbox
from openevs.agent.mirror.wire import FrameReader, Kind, LinkReply
from openevs.security.identity import CertRole
from openevs.security.tls import require_peer

if TYPE_CHECKING:
    from openevs.agent.mirror.link import PeerLink

log = logging.getLogger(__name__)

CONNECTIONS = 2
REQUEST_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
BACKOFF_S = (0.25, 0.5, 1.0)

# What a request's answer is given to: (the reply, None) or (None, why the connection was lost).
OnReply = Callable[[LinkReply | None, Exception | None], None]


class LinkConnection(asyncio.BufferedProtocol):
    """One upgraded connection: requests out (outbox.py), replies matched to them by cookie.

    It becomes the transport's protocol once the upgrade is done: replies are
    received into the reader's memory and resolved in the same callback, with
    no reading task."""

    def __init__(
        self, writer: asyncio.StreamWriter, on_lost: Callable[[LinkConnection, str], None],
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:  # fmt: skip
        transport = cast(asyncio.Transport, writer.transport)  # uvloop's is one without subclassing it
        self._writer = writer  # kept: a StreamWriter collected while its transport is open closes it
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._on_lost = on_lost
        self.timeout_s = timeout_s
        self._frames = FrameReader(requests=False)
        # cookie -> (on_reply, deadline, what), oldest first (a dict keeps its insertion order)
        self._pending: dict[int, tuple[OnReply, float, str]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._cookies = itertools.count(1)
        self._out = Outbox(transport)
        self.closed = False
        transport.set_protocol(self)

    def send(
        self, kind: Kind, handle: int = 0, offset: int = 0, length: int = 0,
        payload: bytes | bytearray | memoryview = b"", fua: bool = False, what: str = "request",
    ) -> asyncio.Future[LinkReply]:  # fmt: skip
        """Queue a request now (no task; it leaves at the end of this loop turn); its reply's future.

        `payload` is sent by reference: leave it unchanged until the reply came.
        Without a reply within `timeout_s` the connection is lost (`on_lost`)."""
        future: asyncio.Future[LinkReply] = self._loop.create_future()

        def resolve(reply: LinkReply | None, exc: Exception | None) -> None:
            if future.done():
                return
            if reply is not None:
                future.set_result(reply)
            else:
                future.set_exception(exc or ConnectionError("link connection closed"))

        self.send_then(resolve, kind, handle, offset, length, payload, fua, what)
        return future

    def send_then(
        self, on_reply: OnReply, kind: Kind, handle: int = 0, offset: int = 0, length: int = 0,
        payload: bytes | bytearray | memoryview = b"", fua: bool = False, what: str = "request",
        now: bool = False,
    ) -> None:  # fmt: skip
        """`send`, with `on_reply(reply, None)` called in the callback that received the
        reply (no future, no extra loop turn), or `on_reply(None, error)` when the
        connection is lost first. With `now` the request leaves at once (outbox.py)."""
        if self.closed:
            raise ConnectionError("link connection closed")
        cookie = next(self._cookies)
        self._pending[cookie] = (on_reply, self._loop.time() + self.timeout_s, what)
        if self._timer is None:
            self._arm()
        header = wire.encode_request(kind, cookie, handle, offset, length, fua=fua)
        if payload:
            self._out.add(header, payload, now=now)
        else:
            self._out.add(header, now=now)

    # -- asyncio.BufferedProtocol ------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._frames.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return
        frames, pending = self._frames, self._pending
        try:
            frames.buffer_updated(nbytes)
            while (frame := frames.next_frame()) is not None:
                assert isinstance(frame, LinkReply)
                entry = pending.pop(frame.cookie, None)
                if entry is None:
                    raise wire.WireError(f"reply to unknown cookie {frame.cookie}")
                entry[0](frame, None)
        except wire.WireError as exc:
            self.abort(f"link connection failed: {exc}")

    # -- one timer per connection, at the oldest request's deadline -----------

    def _arm(self) -> None:
        oldest = next(iter(self._pending.values()), None)
        self._timer = None if oldest is None else self._loop.call_at(oldest[1], self._check)

    def _check(self) -> None:
        self._timer = None
        oldest = next(iter(self._pending.values()), None)
        if oldest is not None and oldest[1] <= self._loop.time():
            self.abort(f"{oldest[2]}: no answer from the peer within {self.timeout_s:g} s")
            return
        self._arm()

    def eof_received(self) -> bool | None:
        self.abort("the peer closed the link")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"link connection failed: {exc}" if exc is not None else "the peer closed the link"
        self.abort(reason)

    def pause_writing(self) -> None:
        self._out.pause()

    def resume_writing(self) -> None:
        self._out.resume()

    def abort(self, reason: str) -> None:
        """Drop the connection now, failing every pending request."""
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.abort()
        pending, self._pending = self._pending, {}
        self._on_lost(self, reason)  # the pairs go down before anyone sees the failures
        for on_reply, _deadline, _what in pending.values():
            on_reply(None, ConnectionError(reason))


# The link's client TLS: a context, or what gives the one to use for each new connection
# (security/reloading.py: rebuilt when the certificate files change).
LinkTls = ssl.SSLContext | Callable[[], ssl.SSLContext] | None


async def open_link_connection(
    host: str, port: int, token: str, on_lost: Callable[[LinkConnection, str], None],
    *, tls: LinkTls = None, az: str = "", timeout_s: float = REQUEST_TIMEOUT_S,
) -> LinkConnection:  # fmt: skip
    """Connect to a peer agent's NBD port and upgrade to the link protocol (session `token`).

    With `tls` the upgraded connection is mutual TLS and goes on only if the
    peer's certificate is `agent:<az>` (any agent when `az` is not known)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        greeting = await reader.readexactly(wire.GREETING_BYTES)
        writer.write(wire.upgrade_request(greeting, token))
        wire.check_upgrade_reply(await reader.readexactly(wire.UPGRADE_REPLY_BYTES))
        if tls is not None:
            await writer.start_tls(tls() if callable(tls) else tls, server_hostname=host)
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is None:
                raise ConnectionError("the link did not start TLS")
            require_peer(ssl_object, CertRole.AGENT, az or None)
    except BaseException:
        writer.transport.abort()
        raise
    return LinkConnection(writer, on_lost, timeout_s)  # the peer sends nothing unasked: nothing left


class LinkPool:
    """The connections to one peer agent and the pairs that use them."""

    def __init__(
        self, host: str, port: int, *, connections: int = CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S, tls: LinkTls = None, az: str = "",
    ) -> None:  # fmt: skip
        self.host = host
        self.port = port
        self._tls = tls
        self._az = az  # the peer agent's AZ, checked in its certificate with TLS
        self.label = f"{host}:{port}"
        self._count = connections
        self.request_timeout_s = request_timeout_s
        self.links: set[PeerLink] = set()
        self._to_open: set[PeerLink] = set()  # pairs whose handle is to be (re)opened
        self._opening: set[PeerLink] = set()
        self._conns: list[LinkConnection] = []
        self._next = itertools.count()
        self.up = False
        self.session = 0  # bumped at every (re)connection: handles belong to one session
        self.last_error = ""
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The pool's event loop (asked once: get_running_loop costs a getpid per call)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- pairs --------------------------------------------------------------

    def add(self, link: PeerLink) -> None:
        self.links.add(link)
        self.want_open(link)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep_up())

    def remove(self, link: PeerLink) -> None:
        self.links.discard(link)
        self._to_open.discard(link)

    def want_open(self, link: PeerLink) -> None:
        """(Re)open `link`'s handle when the pool is up and its retry time came."""
        if link in self.links and link not in self._opening:
            self._to_open.add(link)
            self._wake.set()

    # -- requests -----------------------------------------------------------

    def send(
        self, what: str, kind: Kind, handle: int = 0, offset: int = 0, length: int = 0,
        payload: bytes | bytearray | memoryview = b"", fua: bool = False,
    ) -> asyncio.Future[LinkReply]:  # fmt: skip
        """Send on the next connection; without an answer in time the pool goes down."""
        if not self.up or not self._conns:
            raise ConnectionError(self.last_error or "link is down")
        conn = self._conns[next(self._next) % len(self._conns)]
        # The connection's one timer, not asyncio.timeout(): the NBD server may run the
        # caller eagerly, outside any task. On expiry the connection is lost, so the pool
        # goes down (`_lost`) and every connection is aborted, failing this request.
        return conn.send(kind, handle, offset, length, payload, fua, what)

    def send_then(
        self, on_reply: OnReply, what: str, kind: Kind, handle: int = 0, offset: int = 0,
        length: int = 0, payload: bytes | bytearray | memoryview = b"", fua: bool = False,
        now: bool = False,
    ) -> None:  # fmt: skip
        """`send` with a callback instead of a future (LinkConnection.send_then)."""
        if not self.up or not self._conns:
            raise ConnectionError(self.last_error or "link is down")
        conns = self._conns
        conns[next(self._next) % len(conns)].send_then(
            on_reply, kind, handle, offset, length, payload, fua, what, now
        )

    def drop(self, reason: str) -> None:
        """Take the pool down now: every connection aborted, every pair told first."""
        was_up, self.up = self.up, False
        if reason:
            self.last_error = reason
        conns, self._conns = self._conns, []
        if was_up:
            log.warning("replication link to %s down (%d pairs): %s", self.label, len(self.links), reason)
        for link in list(self.links):
            link.pool_down(reason)
        for conn in conns:
            conn.abort(reason)
        self._wake.set()

    def _lost(self, conn: LinkConnection, reason: str) -> None:
        if conn in self._conns:
            self.drop(reason)

    # -- the one loop -------------------------------------------------------

    async def _keep_up(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self.up:
                try:
                    await self._connect()
                except Exception as exc:
                    self.last_error = f"cannot connect to {self.label}: {exc or type(exc).__name__}"
                    for link in list(self.links):
                        link.last_error = self.last_error
                    await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                    attempt += 1
                    continue
                attempt = 0
                self.session += 1
                self.up = True
                self.last_error = ""
                log.info("replication link to %s up (%d pairs)", self.label, len(self.links))
                self._to_open.update(self.links - self._opening)
            now = loop.time()
            due = [link for link in self._to_open if link.retry_at <= now]
            for link in due:
                self._to_open.discard(link)
                self._opening.add(link)
                self._spawn(self._open(link))
            later = [link.retry_at for link in self._to_open]
            self._wake.clear()
            timeout = max(0.0, min(later) - now) if later else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _open(self, link: PeerLink) -> None:
        try:
            if self.up and link in self.links:
                await link.open()
        finally:
            self._opening.discard(link)
            if link in self.links and not link.up and self.up:
                self.want_open(link)  # failed: again at its retry time

    def _spawn(self, work: Coroutine[object, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _connect(self) -> None:
        # A new link session at every (re)connection: the peer scopes the pairs'
        # handles to it, so nothing of an older session's connections is served again.
        token = secrets.token_hex(8)
        conns: list[LinkConnection] = []
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                for _ in range(self._count):
                    conns.append(
                        await open_link_connection(
                            self.host,
                            self.port,
                            token,
                            self._lost,
                            tls=self._tls,
                            az=self._az,
                            timeout_s=self.request_timeout_s,
                        )
                    )
        except BaseException:
            for conn in conns:
                conn.abort("connect failed")
            raise
        self._conns = conns

    async def close(self) -> None:
        self._closed = True
        self.drop("")
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class LinkPools:
    """One pool per peer agent address, alive while a pair uses it."""

    def __init__(self, tls: LinkTls = None) -> None:
        self._tls = tls
        self._pools: dict[tuple[str, int], LinkPool] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def join(self, link: PeerLink) -> LinkPool:
        key = (link.peer.host, link.peer.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = LinkPool(*key, tls=self._tls, az=link.peer.az)
        pool.add(link)
        return pool

    def leave(self, link: PeerLink, pool: LinkPool) -> None:
        pool.remove(link)
        if not pool.links and self._pools.get((pool.host, pool.port)) is pool:
            del self._pools[(pool.host, pool.port)]
            task = asyncio.get_running_loop().create_task(pool.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @property
    def connection_count(self) -> int:
        return sum(len(p._conns) for p in self._pools.values())

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
