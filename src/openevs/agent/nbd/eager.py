"""Run a coroutine eagerly: step it inline, and only make a Task if it suspends.

Python 3.12 has `asyncio.eager_task_factory`; on 3.11 this is the same idea
for one call site. An export write that lands in the page cache never
suspends, so the server answers it inline, in the same wake-up that read the
request, without creating a Task (the main cost of a small write).

`run_eagerly` goes further for the requests that do suspend (a replicated
write waits for its peer's answer): no Task at all, the coroutine is stepped
by the done-callbacks of the futures it awaits (`EagerRun`), and its end is
handed to a callback in the same loop turn, where a Task would take three
(its first step, its wake-up, its done-callbacks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
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


# What an EagerRun gives its coroutine's end to: (the run, result, None) or (the run, None, the exception).
OnDone = Callable[["EagerRun", Any, BaseException | None], None]


class EagerRun:
    """A coroutine that suspended during its eager first step, stepped on by the
    done-callbacks of the futures it awaits: no Task (its creation, its first step
    and its done-callbacks each cost a loop turn or more per request).

    It is not a Task: code it runs must not need `asyncio.current_task()` (no
    `asyncio.timeout()`); Futures, Locks, Events, `to_thread` and tasks it creates
    all work. `cancel()` cancels the future it waits on (as Task.cancel does), so
    the coroutine sees CancelledError there; `on_done` then gets that error.
    """

    __slots__ = ("_coro", "_loop", "_on_done", "_waiting", "_must_cancel", "done")

    def __init__(
        self, coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop, on_done: OnDone
    ) -> None:
        self._coro = coro
        self._loop = loop
        self._on_done = on_done
        self._waiting: asyncio.Future[Any] | None = None
        self._must_cancel = False
        self.done = False

    def cancel(self) -> None:
        if self.done:
            return
        waiting = self._waiting
        if waiting is not None and waiting.cancel():
            return  # its done-callback steps the coroutine, which sees CancelledError
        self._must_cancel = True

    def _wakeup(self, _future: asyncio.Future[Any]) -> None:
        self._waiting = None
        self._step()

    def _step(self) -> None:
        try:
            if self._must_cancel:
                self._must_cancel = False
                pending = self._coro.throw(asyncio.CancelledError())
            else:
                pending = self._coro.send(None)
        except StopIteration as stop:
            self._finish(stop.value, None)
            return
        except BaseException as exc:  # CancelledError too: the caller decides
            self._finish(None, exc)
            return
        self.wait(pending)

    def wait(self, pending: Any) -> None:
        """Go on once `pending` (what the coroutine yielded) is done."""
        if pending is None:  # a bare yield (asyncio.sleep(0)): the next loop turn
            self._loop.call_soon(self._step)
        elif getattr(pending, "_asyncio_future_blocking", None):
            pending._asyncio_future_blocking = False
            self._waiting = pending
            pending.add_done_callback(self._wakeup)
        else:  # what a Task would refuse too
            self._coro.close()
            self._finish(None, RuntimeError(f"eager run got bad yield: {pending!r}"))

    def _finish(self, result: Any, exc: BaseException | None) -> None:
        self.done = True
        self._on_done(self, result, exc)


def run_eagerly(
    coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop, on_done: OnDone
) -> tuple[bool, T | EagerRun]:
    """(True, result) if `coro` completed without suspending; else (False, its EagerRun),
    and `on_done(run, result, exc)` is called when it ends (in the callback that ended it)."""
    try:
        pending = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    run = EagerRun(coro, loop, on_done)
    run.wait(pending)
    return False, run
