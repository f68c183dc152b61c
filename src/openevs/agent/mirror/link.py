"""One pair's replication link: its handle on the shared connections to the peer agent.

`PeerLink` is up when its handle on the peer agent's `LinkPool`
(link_pool.py) is open: the pool's connections carry every pair's requests,
each naming its pair by the handle (wire.py). A failed request takes this
pair's link down; a request without an answer in time, or a broken
connection, takes the whole pool — every pair with that peer — down.
Either way `on_down` is called synchronously, before the failing request's
caller sees the error, so the caller's decision (mark dirty, split the
group) happens in the same event-loop step. The pool's loop reopens the
handle (with a short backoff after a failure) and `on_up` is called when
the link is back.

Every open is a new pair session: the peer makes the older handle stale
and lets its requests in flight end first, so a write stuck in an old
session can never land after the resync that followed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from time import perf_counter

from openevs.agent.mirror import wire
from openevs.agent.mirror.link_pool import BACKOFF_S, LinkPool, LinkPools
from openevs.agent.mirror.stats import MIRROR_STATS
from openevs.agent.mirror.wire import Kind, LinkReply
from openevs.contract import Peer

log = logging.getLogger(__name__)

SESSION_SEP = wire.SESSION_SEP


class LinkDown(Exception):
    """The request did not reach the peer; the link is down now."""


class PeerLink:
    def __init__(
        self,
        label: str,
        peer: Peer,
        pools: LinkPools,
        *,
        on_up: Callable[[PeerLink], None],
        on_down: Callable[[PeerLink, str], None],
        min_size_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        self.label = label
        self.peer = peer
        self._pools = pools
        self._on_up = on_up
        self._on_down = on_down
        self._min_size_bytes = min_size_bytes
        self._pool: LinkPool | None = None
        self._handle = 0
        self.up = False
        self.generation = 0  # bumped at every (re)open
        self.last_error = ""
        self.peer_size_bytes = 0
        self.retry_at = 0.0  # loop time before which the pool does not reopen it
        self._failures = 0
        self._closed = False

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        if self._pool is None and not self._closed:
            self._pool = self._pools.join(self)

    async def close(self) -> None:
        self._closed = True
        pool, handle = self._pool, self._handle
        self._drop("link closed", notify=False)
        if pool is None:
            return
        self._pool = None
        self._pools.leave(self, pool)
        if handle and pool.up:  # let the peer forget the handle (best effort)
            with contextlib.suppress(ConnectionError, OSError):
                await pool.send("close", Kind.CLOSE, handle)

    def mark_down(self, reason: str) -> None:
        """Take this pair's link down now (synchronously) and let the pool reopen it."""
        self._drop(reason, notify=True)
        self._retry_later()

    def pool_down(self, reason: str) -> None:
        """The pool lost its connections (LinkPool.drop): down now; reopened when it is back."""
        self._drop(reason, notify=True)
        self.retry_at = 0.0

    def received(self, generation: int) -> bool:
        """True when the link that carried a request of `generation` is still up,
        so the peer still holds what it acknowledged then (in its page cache)."""
        return self.up and self.generation == generation

    def _drop(self, reason: str, *, notify: bool) -> None:
        was_up, self.up = self.up, False
        self._handle = 0
        if reason:
            self.last_error = reason
        if was_up:
            log.warning("replication link %s down: %s", self.label, reason)
            if notify:
                self._on_down(self, reason)

    def _retry_later(self) -> None:
        delay = BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
        self._failures += 1
        self.retry_at = asyncio.get_running_loop().time() + delay
        if self._pool is not None:
            self._pool.want_open(self)

    async def open(self) -> None:
        """Open a handle in a new pair session (the pool's loop calls this)."""
        pool = self._pool
        if pool is None or self._closed or self.up:
            return
        name = f"{self.peer.export}{SESSION_SEP}{secrets.token_hex(6)}"
        session = pool.session
        try:
            reply = await pool.send("open", Kind.OPEN, length=len(name), payload=name.encode())
            opened = self._opened(reply)
        except (ConnectionError, OSError, wire.WireError) as exc:
            self.last_error = f"cannot open the link to {self.peer.host}:{self.peer.port}: {exc}"
            self.retry_at = asyncio.get_running_loop().time() + BACKOFF_S[-1]
            self._failures += 1
            return
        if self._closed or pool is not self._pool or not pool.up or pool.session != session:
            return  # closed meanwhile, or the handle is of a session gone since: open again
        self._handle = opened.handle
        self.peer_size_bytes = opened.size_bytes
        self.up = True
        self.generation += 1
        self.last_error = ""
        self._failures = 0
        log.info("replication link %s up", self.label)
        self._on_up(self)

    def _opened(self, reply: LinkReply) -> wire.Opened:
        if reply.error == wire.ENOENT:
            raise ConnectionError("the peer does not serve this link export (yet)")
        if reply.error:
            raise ConnectionError(f"the peer refused the link (errno {reply.error})")
        opened = wire.decode_opened(reply.payload)
        if opened.read_only:
            raise ConnectionError("the peer's link export is read-only")
        wanted = self._min_size_bytes()
        if opened.size_bytes < wanted:
            raise ConnectionError(
                f"the peer volume is smaller ({opened.size_bytes} bytes) than this one"
                f" ({wanted} bytes): grow it first"
            )
        return opened

    # -- requests ---------------------------------------------------------

    def _send(
        self, what: str, kind: Kind, offset: int = 0, length: int = 0,
        payload: bytes | bytearray | memoryview = b"", fua: bool = False, forwarded: bool = False,
        now: bool = False,
    ) -> asyncio.Future[None]:  # fmt: skip
        """Send now; a future that fails with LinkDown after the link was taken down
        (`forwarded`: a user's write passed on, counted apart from the sync's; `now`:
        it leaves at once rather than at the end of the loop turn).

        The future is resolved in the callback that received the answer (no
        chained future, no extra loop turn)."""
        pool = self._pool
        if not self.up or pool is None:
            raise LinkDown(self.last_error or "link is down")
        generation = self.generation
        started = perf_counter()
        result: asyncio.Future[None] = pool.loop.create_future()

        def done(reply: LinkReply | None, exc: Exception | None) -> None:
            if reply is not None and not reply.error:
                seconds = perf_counter() - started
                MIRROR_STATS.link[what].observe(length, seconds)
                if forwarded:
                    MIRROR_STATS.forwarded.observe(length, seconds)
                if not result.done():  # cancelled by whoever awaited it: nothing to tell
                    result.set_result(None)
                return
            reason = f"{what} failed: {exc or f'errno {reply.error if reply else 0}'}"
            self._failed(generation, reason)  # down before anyone awaiting `result` resumes
            if not result.done():
                result.set_exception(LinkDown(self.last_error or reason))

        try:
            pool.send_then(done, what, kind, self._handle, offset, length, payload, fua, now)
        except (ConnectionError, OSError) as exc:
            self._failed(generation, f"{what} failed: {exc or type(exc).__name__}")
            raise LinkDown(self.last_error) from exc
        return result

    def _failed(self, generation: int, reason: str) -> None:
        if self.up and self.generation == generation:
            self.mark_down(reason)

    def start_write(
        self, offset: int, data: bytes | bytearray | memoryview, fua: bool
    ) -> asyncio.Future[None]:
        """Send a WRITE now, without a task; the future of the peer's answer.

        Raises LinkDown at once when the link is down. When the request fails,
        the link is taken down (`on_down` runs) before anyone awaiting the
        future resumes. `data` must stay unchanged until it is done.
        """
        return self._send("write", Kind.WRITE, offset, len(data), data, fua, forwarded=True)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, fua: bool) -> None:
        await self._send("write", Kind.WRITE, offset, len(data), data, fua)

    async def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        await self._send("write_zeroes", Kind.WRITE_ZEROES, offset, length, fua=fua)

    async def trim(self, offset: int, length: int, fua: bool = False) -> None:
        await self._send("trim", Kind.TRIM, offset, length, fua=fua)

    async def flush(self) -> None:
        await self._send("flush", Kind.FLUSH)

    def start_flush(self) -> asyncio.Future[None]:
        """Send a user's FLUSH now, without a task (like start_write); LinkDown at once
        when the link is down."""
        return self._send("flush", Kind.FLUSH, now=True)
