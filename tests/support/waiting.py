"""Wait on a condition with a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout_s: float = 20.0,
    interval_s: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call probe until it returns something truthy and return that; an exception
    of `retry_on` counts as "not yet". Fails naming `what` (and the last such
    exception) at the deadline."""
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while True:
        try:
            result = probe()
        except retry_on as exc:
            last_exc, result = exc, None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{detail}")
        time.sleep(interval_s)
