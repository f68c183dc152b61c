"""The witness service: the protocol (protocol.py) on TCP, the rules (arbiter.py),
the records (store.py).

Requests are decided one at a time under one lock, and a grant that changed
a record is answered only after the record is on disk, so two racing
requests for the same unit see each other's outcome. The witness holds no
volume data; it runs standalone (`openevs witness`) or inside the agent of
a third AZ.

With TLS files the port is mutual TLS: a peer is answered only if its
certificate is an agent's or the controller's, and an agent speaks only for
its own AZ (the `side` of its Hello). Anyone else has the connection closed
before a frame is read. Files are re-read when they change (reloading.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from openevs.security import PeerRejected
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles
from openevs.security.reloading import ReloadingServerContext
from openevs.security.tls import require_peer_role
from openevs.witness import protocol as p
from openevs.witness.arbiter import DEFAULT_LEASE_S, Arbiter, Decision
from openevs.witness.store import RecordStore, StoreError

log = logging.getLogger(__name__)

READ_BYTES = 64 * 1024
WITNESS_CALLERS = frozenset({CertRole.AGENT, CertRole.CONTROLLER})


class WitnessServer:
    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        lease_s: float = DEFAULT_LEASE_S,
        tls: TlsFiles | None = None,
    ) -> None:
        self._tls = None if tls is None else ReloadingServerContext(tls)  # unusable files: PkiError now
        self.store = RecordStore(state_dir)
        self.arbiter = Arbiter.restarted(self.store.load(), time.monotonic(), lease_s)
        self.host = host
        self._port_wanted = port
        self._server: asyncio.Server | None = None
        self._lock = asyncio.Lock()
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        ssl = None if self._tls is None else self._tls.context
        self._server = await asyncio.start_server(self._serve, self.host, self._port_wanted, ssl=ssl)
        log.info(
            "witness on %s:%d%s, %d records, lease %.1f s",
            self.host, self.port, " (mutual TLS)" if ssl else "",
            len(self.arbiter.records), self.arbiter.lease_s,
        )  # fmt: skip

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.store.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = p.Connection(p.Role.SERVER)
        peer = writer.get_extra_info("peername")
        try:
            identity = self._caller(writer)
        except PeerRejected as exc:
            log.warning("witness: refused %s: %s", peer, exc)
            self._connections.discard(task)
            writer.transport.abort()
            return
        try:
            while True:
                data = await reader.read(READ_BYTES)
                conn.receive_data(data)
                while not isinstance(event := conn.next_event(), p.NeedData):
                    _check_side(identity, event)
                    reply = await self._answer(conn, event)
                    writer.write(conn.send(reply))
                if conn.state is p.State.CLOSED:
                    break
                await writer.drain()
        except p.RemoteProtocolError as exc:
            log.warning("witness: connection from %s dropped: %s", peer, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _caller(self, writer: asyncio.StreamWriter) -> Identity | None:
        """Who the peer is (None without TLS); PeerRejected if it may not talk to a witness."""
        if self._tls is None:
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None:
            raise PeerRejected("not a TLS connection")
        return require_peer_role(ssl_object, WITNESS_CALLERS)

    async def _answer(self, conn: p.Connection, message: p.Message) -> p.Message:
        now = time.monotonic()
        side = conn.side or ""
        self.arbiter.seen(side, now)
        if isinstance(message, p.Hello):
            return p.Welcome(lease_s=self.arbiter.lease_s)
        if isinstance(message, p.Ping):
            return p.Pong(id=message.id)
        if isinstance(message, p.Acquire):
            async with self._lock:
                try:
                    grants = await self._acquire(message.units, side, message.force)
                except StoreError as exc:
                    log.error("witness: %s", exc)
                    return p.Failure(id=message.id, message=str(exc))
            return p.Acquired(id=message.id, grants=grants)
        if isinstance(message, p.Release):
            async with self._lock:
                for unit in message.units:
                    self.arbiter.release(unit.key, unit.epoch, side)
            return p.Released(id=message.id)
        if isinstance(message, p.Status):
            return self._status(message, now)
        raise p.RemoteProtocolError(f"a client does not send {type(message).__name__}")

    async def _acquire(self, wanted: list[p.Unit], side: str, force: bool) -> list[p.Grant]:
        """Decide every unit, persist the changed records in one batch, then apply them."""
        decisions: dict[str, Decision] = {}
        now = time.monotonic()
        for unit in wanted:  # of duplicate keys the last wins
            decisions[unit.key] = self.arbiter.decide(unit.key, unit.epoch, side, now, force=force)
        changed = [d.record for d in decisions.values() if d.changed and d.record is not None]
        if changed:
            await asyncio.to_thread(self.store.save, changed)
            log.info(
                "witness: %d unit(s) granted to %s%s: %s", len(changed), side, " (forced)" if force else "",
                ", ".join(f"{r.key}@{r.epoch}" for r in changed[:5]) + (" ..." if len(changed) > 5 else ""),
            )  # fmt: skip
        now = time.monotonic()
        for decision in decisions.values():
            self.arbiter.apply(decision, now)
        return [_grant(decisions[u.key]) for u in wanted]

    def _status(self, message: p.Status, now: float) -> p.StatusReply:
        records = []
        for key in message.keys:
            record = self.arbiter.records.get(key)
            if record is not None:
                records.append(
                    p.RecordView(
                        key=key, epoch=record.epoch, holder=record.holder,
                        lease_left_s=self.arbiter.lease_left_s(key, now),
                    )
                )  # fmt: skip
        sides = [p.SideView(side=s, seen_ago_s=self.arbiter.seen_ago_s(s, now)) for s in message.sides]
        return p.StatusReply(id=message.id, records=records, sides=sides)


def _check_side(identity: Identity | None, message: p.Message) -> None:
    """An agent asks for its own AZ only; the controller may speak for any side."""
    agent = identity is not None and identity.role is CertRole.AGENT
    if agent and isinstance(message, p.Hello) and identity is not None and message.side != identity.az:
        raise p.RemoteProtocolError(f"{identity} may not speak for side {message.side[:64]!r}")


def _grant(decision: Decision) -> p.Grant:
    record = decision.record
    return p.Grant(
        key=decision.key,
        granted=decision.granted,
        epoch=None if record is None else record.epoch,
        holder=None if record is None else record.holder,
        lease_s=decision.lease_s,
        refusal=None if decision.refusal is None else str(decision.refusal),
        lease_left_s=decision.lease_left_s,
    )
