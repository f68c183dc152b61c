"""Run a coroutine eagerly: step it inline, and only make a Task if it suspends.

Python 3.12 has `asyncio.eager_task_factory`; on 3.11 this is the same idea
for one call site. An export write that lands in the page cache never
suspends, so the server answers it inline, in the same wake-up that read the
request, without creating a Task (the main cost of a small write).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Suspended(Generic[T]):
    """A coroutine that suspended on `pending` during its eager first step."""

    def __init__(self, coro: Coroutine[Any, Any, T], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, None, T]:
        pending = self.pending
        while True:
            try:
                yield pending  # the Task waits on what the coroutine waited on
            except BaseException as exc:  # cancellation and the like: pass it on
                try:
                    pending = self.coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                continue
            try:
                pending = self.coro.send(None)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


async def _finish(suspended: Suspended[T]) -> T:
    return await suspended


def start_eagerly(
    coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
) -> tuple[bool, T | asyncio.Task[T]]:
    """(True, result) if `coro` completed without suspending, else (False, its Task)."""
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, loop.create_task(_finish(Suspended(coro, pending)))
