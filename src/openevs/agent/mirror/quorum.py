"""The agent's side of arbitration: leases from the witnesses of its primaries.

One `Quorum` per agent, one `_WitnessSession` per witness address (one
connection, one loop), whatever the number of pairs: idle units cost
nothing but the session's ping. A unit (a pair, or a whole consistency
group) that may acknowledge writes its peer lacks *wants* a lease; the
session acquires every wanted unit of its witness in one request, renews
them before half their lease is gone, and releases units nobody needs any
more (so a later failover does not wait for the lease to run out).

Rules this module keeps:

- a lease counts from the moment its request was *sent* (arbiter.py's
  `holder_expiry`, with the drift margin), so this side stops using it
  before the witness could give the unit to the peer;
- a refusal because the peer holds a higher epoch (or this epoch) is final
  for that epoch: the unit is *outdated* and its writes fail at once;
- the witness being unreachable only matters to units that want a lease:
  while a pair writes through to its peer, nothing waits for the witness;
- every change of what a unit may do is reported (`on_change(key)`) so
  suspended writes decide again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from openevs.contract import Arbiter, ArbitrationState, WitnessAddress
from openevs.security.pki import TlsFiles
from openevs.witness.arbiter import Refusal, holder_expiry
from openevs.witness.client import AsyncWitnessClient, WitnessFailed, WitnessUnreachable, units
from openevs.witness.protocol import RemoteProtocolError

log = logging.getLogger(__name__)

PING_INTERVAL_S = 1.0  # reachability of a witness nobody needs a lease from
RETRY_S = 0.2  # a wanted lease the witness did not grant: ask again this soon
REQUEST_TIMEOUT_S = 2.0
_FINAL = {str(Refusal.STALE_EPOCH), str(Refusal.HELD_BY_PEER)}


@dataclass
class _Unit:
    epoch: int
    wanted: bool = False
    expires_at: float = 0.0  # monotonic, this side's clock
    outdated: bool = False
    refusal: str | None = None

    def lease(self, now: float) -> bool:
        return now < self.expires_at and not self.outdated


class _WitnessSession:
    def __init__(
        self,
        address: WitnessAddress,
        side: str,
        on_change: Callable[[str], None],
        tls: TlsFiles | None = None,
    ) -> None:
        self.address = address
        self.client = AsyncWitnessClient(
            address.host, address.port, side, timeout_s=REQUEST_TIMEOUT_S, tls=tls
        )
        self.units: dict[str, _Unit] = {}
        self.reachable = False
        self.still_needed: Callable[[str], bool] = lambda _key: True
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._releases: list[tuple[str, int]] = []

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()

    async def _run(self) -> None:
        while True:
            try:
                delay = await self._round()
            except Exception:  # the top of a loop: log, keep arbitrating
                log.exception("witness %s: round failed", self.address.label)
                delay = RETRY_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _round(self) -> float:
        """One exchange with the witness; returns how long to wait before the next."""
        for key, held in self.units.items():
            if held.wanted and held.lease(time.monotonic()) and not self.still_needed(key):
                held.wanted = False
                self._releases.append((key, held.epoch))
        wanted = [(k, u.epoch) for k, u in self.units.items() if u.wanted and not u.outdated]
        sent = time.monotonic()
        try:
            if self._releases:
                releases, self._releases = self._releases, []
                await self.client.release(units(releases))
                for key, epoch in releases:
                    released = self.units.get(key)
                    if released is not None and released.epoch == epoch and not released.wanted:
                        released.expires_at = 0.0
            if wanted:
                grants = await self.client.acquire(units(wanted))
            else:
                await self.client.ping()
                grants = []
        except (WitnessUnreachable, WitnessFailed, RemoteProtocolError) as exc:
            if self.reachable:
                log.warning("witness %s unreachable: %s", self.address.label, exc)
            self.reachable = False
            return RETRY_S if wanted else PING_INTERVAL_S
        if not self.reachable:
            log.info("witness %s reachable", self.address.label)
        self.reachable = True
        renew_in = PING_INTERVAL_S
        for grant in grants:
            unit = self.units.get(grant.key)
            if unit is None or grant.epoch is None:
                continue
            before = unit.lease(time.monotonic())
            if grant.granted and grant.epoch == unit.epoch:
                unit.expires_at = holder_expiry(sent, grant.lease_s)
                unit.refusal = None
                renew_in = min(renew_in, grant.lease_s / 2)
            else:
                unit.refusal = grant.refusal
                if grant.refusal in _FINAL and grant.epoch >= unit.epoch:
                    if not unit.outdated:
                        log.error(
                            "%s at epoch %d: the witness gave epoch %d to %s; writes that the peer"
                            " lacks fail from now on", grant.key, unit.epoch, grant.epoch, grant.holder,
                        )  # fmt: skip
                    unit.outdated = True
                renew_in = RETRY_S
            if unit.lease(time.monotonic()) != before or unit.outdated:
                self._on_change(grant.key)
        return renew_in


class Quorum:
    """Every witness this agent's primaries are arbitrated by."""

    def __init__(self, side: str, on_change: Callable[[str], None], tls: TlsFiles | None = None) -> None:
        self.side = side
        self.tls = tls
        self._on_change = on_change
        self._sessions: dict[tuple[str, int], _WitnessSession] = {}
        self.still_needed: Callable[[str], bool] = lambda _key: True

    def _session(self, address: WitnessAddress) -> _WitnessSession:
        where = (address.host, address.port)
        session = self._sessions.get(where)
        if session is None:
            session = _WitnessSession(address, self.side, self._on_change, self.tls)
            session.still_needed = self.still_needed
            self._sessions[where] = session
            session.start()
        return session

    def _unit(self, arbiter: Arbiter) -> _Unit:
        session = self._session(arbiter.witness)
        unit = session.units.get(arbiter.key)
        if unit is None or unit.epoch != arbiter.epoch:
            unit = session.units[arbiter.key] = _Unit(arbiter.epoch, wanted=unit.wanted if unit else False)
        return unit

    def watch(self, arbiter: Arbiter) -> None:
        """Know this unit (its witness is pinged from now on), wanting nothing yet."""
        self._unit(arbiter)

    def want(self, arbiter: Arbiter) -> None:
        """This unit may acknowledge writes its peer lacks: get (and keep) its lease."""
        unit = self._unit(arbiter)
        if not unit.wanted:
            unit.wanted = True
            self._session(arbiter.witness).wake()

    def lease(self, arbiter: Arbiter) -> bool:
        return self._unit(arbiter).lease(time.monotonic())

    def outdated(self, arbiter: Arbiter) -> bool:
        return self._unit(arbiter).outdated

    def release(self, arbiter: Arbiter) -> None:
        """Demoted, or gone: give the lease back now."""
        session = self._sessions.get((arbiter.witness.host, arbiter.witness.port))
        unit = session.units.pop(arbiter.key, None) if session is not None else None
        if session is not None and unit is not None and unit.expires_at > time.monotonic():
            session._releases.append((arbiter.key, unit.epoch))
            session.wake()

    def state(self, arbiter: Arbiter) -> ArbitrationState:
        session = self._session(arbiter.witness)
        unit = self._unit(arbiter)
        now = time.monotonic()
        return ArbitrationState(
            witness=arbiter.witness.label,
            witness_reachable=session.reachable,
            lease=unit.lease(now),
            lease_left_s=round(max(0.0, unit.expires_at - now), 3) if unit.lease(now) else 0.0,
            outdated=unit.outdated,
            refusal=unit.refusal,
        )

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
