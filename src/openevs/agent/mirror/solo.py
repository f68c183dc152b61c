"""The gate a write passes before it is acknowledged without its peer.

A write that stayed local (mirroring off or interrupted, or a dirty
region), or whose forward did not reach the peer, may be acknowledged only
as engine.decide_solo says: at once under static priority, with the
witness's live grant when there is a witness. Without the grant it waits
(I/O is suspended): it is acknowledged as soon as the grant comes, or as
soon as the peer holds its regions after all (the link came back and the
sync copied them; a FUA write then waits for a peer FLUSH too); it fails
with EIO after the arbiter's `suspend_timeout_s`, or at once when the
witness gave the unit to the peer.

Rules this module keeps:

- the gate is passed after the write ended locally (its regions are no
  longer `writing`), so the sync may copy them while the write waits;
- nothing here acknowledges: the caller does, when `allow` returns.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Awaitable, Callable

from openevs.agent.mirror import engine
from openevs.agent.mirror.engine import MirrorState, SoloAction
from openevs.agent.mirror.quorum import Quorum
from openevs.agent.mirror.tasks import Changes
from openevs.contract import Arbiter

RECHECK_S = 0.5  # a waiting write decides again at least this often (lease expiry, timeout)


class SoloGate:
    def __init__(
        self, volume_id: str, state: MirrorState, quorum: Quorum, arbiter: Callable[[], Arbiter | None],
        changes: Changes, peer_flush: Callable[[], Awaitable[bool]],
    ) -> None:  # fmt: skip
        self._volume_id = volume_id
        self._state = state
        self._quorum = quorum
        self._arbiter = arbiter
        self._changes = changes
        self._peer_flush = peer_flush
        self.waiting = 0
        self._waiting_since: float | None = None
        self.suspended_total = 0  # writes that had to wait, since the agent started
        self.failed_total = 0

    @property
    def suspended_for_s(self) -> float:
        return 0.0 if self._waiting_since is None else time.monotonic() - self._waiting_since

    def _peer_has(self, regions: range) -> bool:
        st = self._state
        return st.in_sync_path and not any(r in st.dirty or r in st.copying for r in regions)

    def _decide(self, arbiter: Arbiter | None, waited_s: float) -> SoloAction:
        return engine.decide_solo(
            arbitrated=arbiter is not None,
            lease=arbiter is not None and self._quorum.lease(arbiter),
            outdated=arbiter is not None and self._quorum.outdated(arbiter),
            waited_s=waited_s,
            timeout_s=arbiter.suspend_timeout_s if arbiter is not None else 0.0,
        )

    async def allow(self, regions: range, fua: bool) -> None:
        """Return when the write may be acknowledged; raise OSError(EIO) when it may not."""
        arbiter = self._arbiter()
        if self._decide(arbiter, 0.0) is SoloAction.ACK:
            return  # the usual case: static priority, or the grant is held
        started = time.monotonic()
        self.waiting += 1
        self.suspended_total += 1
        if self._waiting_since is None:
            self._waiting_since = started
        try:
            while True:
                arbiter = self._arbiter()
                action = self._decide(arbiter, time.monotonic() - started)
                if action is SoloAction.ACK:
                    return
                if self._peer_has(regions) and (not fua or await self._peer_flush()):
                    return  # the peer got it after all (the link is back)
                if action is SoloAction.FAIL:
                    self.failed_total += 1
                    raise OSError(errno.EIO, self._failure(arbiter))
                if arbiter is not None:
                    self._quorum.want(arbiter)
                await self._changes.wait(RECHECK_S)
        finally:
            self.waiting -= 1
            if not self.waiting:
                self._waiting_since = None

    def _failure(self, arbiter: Arbiter | None) -> str:
        if arbiter is not None and self._quorum.outdated(arbiter):
            return (
                f"volume {self._volume_id}: the witness gave {arbiter.key} to the peer; this side"
                " may not acknowledge writes its peer lacks"
            )
        timeout = arbiter.suspend_timeout_s if arbiter is not None else 0.0
        return (
            f"volume {self._volume_id}: the peer is unreachable and the witness did not grant"
            f" writing alone within {timeout:g} s"
        )
