"""The buffer pool and the eager coroutine starter of the NBD server's I/O layer."""

from __future__ import annotations

import asyncio

import pytest

from openevs.agent.nbd.buffers import POOL_MIN_BYTES, BufferPool
from openevs.agent.nbd.eager import EagerRun, run_eagerly, start_eagerly


def test_pool_reuses_buffers_of_a_size_class() -> None:
    pool = BufferPool()
    view = pool.get(100_000)
    assert len(view) == 100_000 and len(view.obj) == 131072
    buf = view.obj
    pool.put(view)
    again = pool.get(70_000)
    assert again.obj is buf and len(again) == 70_000
    small = pool.get(10)
    assert len(small.obj) == POOL_MIN_BYTES


def test_pool_keeps_a_bounded_amount() -> None:
    pool = BufferPool(max_kept_bytes=POOL_MIN_BYTES)
    first, second = pool.get(POOL_MIN_BYTES), pool.get(POOL_MIN_BYTES)
    pool.put(first)
    pool.put(second)
    assert pool._kept_bytes == POOL_MIN_BYTES


def test_pool_does_not_recycle_a_buffer_still_in_use() -> None:
    pool = BufferPool()
    view = pool.get(POOL_MIN_BYTES)
    held = view[:10]
    buf = view.obj
    pool.put(view)  # `held` still exports it: must not be handed out again
    assert pool.get(POOL_MIN_BYTES).obj is not buf
    held.release()


def test_eager_completion_needs_no_task() -> None:
    async def quick() -> int:
        return 42

    async def main() -> None:
        done, result = start_eagerly(quick(), asyncio.get_running_loop())
        assert done and result == 42

    asyncio.run(main())


def test_suspended_coroutine_finishes_in_a_task() -> None:
    async def slow(event: asyncio.Event) -> str:
        await event.wait()
        await asyncio.sleep(0)
        return "done"

    async def main() -> None:
        event = asyncio.Event()
        done, task = start_eagerly(slow(event), asyncio.get_running_loop())
        assert not done and isinstance(task, asyncio.Task)
        event.set()
        assert await task == "done"

    asyncio.run(main())


def test_cancellation_reaches_the_suspended_coroutine() -> None:
    seen: list[str] = []

    async def victim() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        done, task = start_eagerly(victim(), asyncio.get_running_loop())
        assert not done and isinstance(task, asyncio.Task)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["cancelled"]


def test_exceptions_propagate_through_the_task() -> None:
    async def failing(event: asyncio.Event) -> None:
        await event.wait()
        raise ValueError("boom")

    async def main() -> None:
        event = asyncio.Event()
        _, task = start_eagerly(failing(event), asyncio.get_running_loop())
        event.set()
        assert isinstance(task, asyncio.Task)
        with pytest.raises(ValueError, match="boom"):
            await task

    asyncio.run(main())


def test_eager_run_ends_in_a_callback_without_a_task() -> None:
    ended: list[tuple[object, BaseException | None]] = []
    tasks_seen: list[object] = []

    async def slow(future: asyncio.Future[int]) -> int:
        value = await future
        tasks_seen.append(asyncio.current_task())
        await asyncio.sleep(0)  # a bare yield: stepped on in the next loop turn
        return value + 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        done, run = run_eagerly(slow(future), loop, lambda _run, r, e: ended.append((r, e)))
        assert not done and isinstance(run, EagerRun)
        future.set_result(41)
        for _ in range(5):
            await asyncio.sleep(0)
        assert run.done

    asyncio.run(main())
    assert ended == [(42, None)]
    assert tasks_seen == [None]  # no Task ran it


def test_eager_run_finishes_inline_like_start_eagerly() -> None:
    async def quick() -> int:
        return 7

    async def main() -> None:
        done, result = run_eagerly(quick(), asyncio.get_running_loop(), lambda *_: None)
        assert done and result == 7

    asyncio.run(main())


def test_eager_run_cancel_reaches_the_coroutine() -> None:
    seen: list[str] = []
    ended: list[BaseException | None] = []

    async def victim() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        done, run = run_eagerly(victim(), asyncio.get_running_loop(), lambda _run, _r, e: ended.append(e))
        assert isinstance(run, EagerRun)
        run.cancel()
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert seen == ["cancelled"]
    assert len(ended) == 1 and isinstance(ended[0], asyncio.CancelledError)


def test_eager_run_passes_exceptions_on() -> None:
    ended: list[BaseException | None] = []

    async def failing(event: asyncio.Event) -> None:
        await event.wait()
        raise ValueError("boom")

    async def main() -> None:
        event = asyncio.Event()
        run_eagerly(failing(event), asyncio.get_running_loop(), lambda _run, _r, e: ended.append(e))
        event.set()
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert len(ended) == 1 and isinstance(ended[0], ValueError)
