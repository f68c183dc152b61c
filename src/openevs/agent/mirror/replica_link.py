"""A primary volume's link to its peer: opened, retired and lost.

`ReplicaLink` keeps the volume's current `PeerLink` (link.py) matching its
config: a mirroring, unfenced primary with a peer has one
(engine.wants_link), anything else has none. A link closed on purpose is
retired in the background (activity.py's last FLUSH); a new peer gets a
new link.

Rules this module keeps:

- the link going down (a failed or timed-out forward) is handled
  synchronously, inside PeerLink's `on_down`, before the failing request's
  caller resumes: `link_up` is cleared, what the peer may not hold is
  marked dirty and `on_lost` splits the group — all before the failing
  write is acknowledged;
- a closed or replaced link reports nothing any more (its callbacks are
  ignored), so an old link can never change a newer one's state.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from openevs.agent.mirror import engine
from openevs.agent.mirror.activity import ActivityLog
from openevs.agent.mirror.engine import MirrorState
from openevs.agent.mirror.link import PeerLink
from openevs.agent.mirror.link_pool import LinkPools
from openevs.agent.mirror.tasks import Changes, TaskSet
from openevs.contract import Peer


class ReplicaLink:
    def __init__(
        self, volume_id: str, state: MirrorState, activity: ActivityLog, changes: Changes,
        tasks: TaskSet, size_bytes: Callable[[], int], pools: LinkPools, *,
        on_up: Callable[[], None], on_lost: Callable[[str], None],
    ) -> None:  # fmt: skip
        self._volume_id = volume_id
        self._state = state
        self._activity = activity
        self._changes = changes
        self._tasks = tasks
        self._size_bytes = size_bytes
        self._pools = pools
        self._on_up_cb = on_up
        self._on_lost = on_lost
        self.current: PeerLink | None = None
        self.closed = False

    @property
    def last_error(self) -> str:
        return self.current.last_error if self.current is not None else ""

    def update(self, peer: Peer | None) -> None:
        """Start or stop the link to match the state and `peer` (synchronous part)."""
        wanted = not self.closed and engine.wants_link(self._state, has_peer=peer is not None)
        if self.current is not None and (not wanted or self.current.peer != peer):
            link, self.current = self.current, None
            self._state.link_up = False
            self._on_lost("link closed")
            self._tasks.spawn(self._retire(link))
        if self.current is None and wanted:
            assert peer is not None
            self.current = PeerLink(
                f"{self._volume_id}->{peer.host}:{peer.port}", peer, self._pools,
                on_up=self._on_up, on_down=self._on_down, min_size_bytes=self._size_bytes,
            )  # fmt: skip
            self.current.start()
        self._changes.notify()

    async def _retire(self, link: PeerLink) -> None:
        try:
            await self._activity.retire(link)
        finally:  # also when the replica closes meanwhile: the old link's reconnect loop ends
            await link.close()
            self._changes.notify()

    async def close(self) -> None:
        self.closed = True
        if self.current is not None:
            await self.current.close()
            self.current = None

    def _on_up(self, link: PeerLink) -> None:
        if link is not self.current:
            return
        self._state.link_up = True
        self._on_up_cb()
        self._changes.notify()

    def _on_down(self, link: PeerLink, reason: str) -> None:
        """Synchronous, before the failed request's caller resumes: the group splits now."""
        if link is not self.current:
            return
        self._state.link_up = False
        if self._state.behind_since is None:
            self._state.behind_since = time.monotonic()
        self._activity.link_lost()
        self._on_lost(reason)
        self._changes.notify()
