"""The replica's change signal (agent/mirror/tasks.py): waits need no current task."""

from __future__ import annotations

import asyncio

from openevs.agent.mirror.tasks import Changes
from openevs.agent.nbd.eager import run_eagerly


def test_notify_wakes_every_waiter_and_a_timeout_ends_a_wait_without_a_task() -> None:
    ended: list[str] = []

    async def waiter(changes: Changes, name: str, timeout_s: float | None) -> None:
        await changes.wait(timeout_s)
        ended.append(name)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        changes = Changes()
        # Stepped with no Task, as the NBD server steps a user's write (nbd/eager.py).
        run_eagerly(waiter(changes, "timed", 0.01), loop, lambda *_: None)
        await asyncio.sleep(0.05)
        assert ended == ["timed"]
        run_eagerly(waiter(changes, "a", None), loop, lambda *_: None)
        run_eagerly(waiter(changes, "b", 10.0), loop, lambda *_: None)
        await asyncio.sleep(0)
        changes.notify()
        for _ in range(3):
            await asyncio.sleep(0)
        assert sorted(ended) == ["a", "b", "timed"]
        assert not changes._waiters

    asyncio.run(main())
