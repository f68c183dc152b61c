"""The asyncio plumbing the parts of one replica share: its change signal and its tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine


class Changes:
    """Wakes everything waiting for a state change of one volume (writes waiting for
    a copy, the sync, a link being retired), and tells `on_change` (the manager's
    change log, what the controller's batched measurement reads).

    `wait` needs no current task (no `asyncio.timeout()`): the NBD server steps
    a user's write with no Task (nbd/eager.py) and a write may wait here."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._waiters: set[asyncio.Future[None]] = set()
        self._on_change = on_change

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._on_change()

    async def wait(self, timeout_s: float | None = None) -> None:
        """Until the next `notify()`, or `timeout_s`."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        timer = None if timeout_s is None else loop.call_later(timeout_s, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class TaskSet:
    """The tasks of one replica: its loops and background work, all cancelled at close."""

    def __init__(self) -> None:
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    def run(self, loop: Coroutine[object, None, None]) -> None:
        """A loop that runs until the replica closes (its failure surfaces at close)."""
        self._loops.append(asyncio.get_running_loop().create_task(loop))

    def spawn(self, work: Coroutine[object, None, None]) -> None:
        """Background work nobody awaits."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)  # a task nobody references may be collected
        task.add_done_callback(self._background.discard)

    async def cancel_all(self) -> None:
        tasks = [*self._loops, *self._background]
        self._loops = []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
