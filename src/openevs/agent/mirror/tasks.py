"""The asyncio plumbing the parts of one replica share: its change signal and its tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine


class Changes:
    """Wakes everything waiting for a state change of one volume (writes waiting for
    a copy, the sync, a link being retired), and tells `on_change` (the manager's
    change log, what the controller's batched measurement reads)."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._event = asyncio.Event()
        self._on_change = on_change

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()
        self._on_change()

    async def wait(self, timeout_s: float | None = None) -> None:
        """Until the next `notify()`, or `timeout_s`."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()


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
