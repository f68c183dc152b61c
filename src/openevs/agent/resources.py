"""What an agent runs short of (descriptors, memory, pool space): its limits and one quiet log.

At start the agent raises its soft RLIMIT_NOFILE to the hard limit (an
agent holds two descriptors per volume plus a few per peer agent) and
reports both in /health. When a resource runs out anyway, the place that
hit it answers with an error that names the resource (the control API:
`resource_shortage`, 503) and reports it here: one warning per resource
per LOG_INTERVAL_S, with the count of the ones it held back — never a
traceback per accept. Nothing is left broken: the next request that finds
the resource back simply succeeds.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from typing import Any

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 30.0
NR_OPEN_PATH = "/proc/sys/fs/nr_open"

SHORTAGES = {
    errno.EMFILE: "file descriptors",
    errno.ENFILE: "file descriptors (the system's table is full)",
    errno.ENOMEM: "memory",
    errno.ENOBUFS: "memory (socket buffers)",
    errno.ENOSPC: "disk space in its pool",
    errno.EDQUOT: "disk quota in its pool",
}


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one; (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(open(NR_OPEN_PATH).read())  # noqa: SIM115 - one small read
        except (OSError, ValueError):
            target = 1 << 20
    if soft != target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, target, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def shortage_of(exc: BaseException) -> str | None:
    """The resource an error says is exhausted, or None when it is another error."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, OSError):
        return SHORTAGES.get(exc.errno or 0)
    return None


class ShortageLog:
    """One warning per resource per interval, however often it is hit."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def report(self, what: str, where: str, exc: BaseException) -> None:
        now = time.monotonic()
        last = self._last.get(what)
        if last is not None and now - last < self.interval_s:
            self._held[what] = self._held.get(what, 0) + 1
            return
        held = self._held.pop(what, 0)
        self._last[what] = now
        log.warning(
            "agent short of %s (%s: %s)%s", what, where, exc,
            f"; {held} more in the last {now - last:.0f} s" if held and last is not None else "",
        )  # fmt: skip


SHORTAGE_LOG = ShortageLog()


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio's own accept (the control API) reports a shortage through the loop's
    exception handler with a traceback each time: report it once per interval."""
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        what = shortage_of(exc) if isinstance(exc, BaseException) else None
        if what is not None and isinstance(exc, BaseException):
            SHORTAGE_LOG.report(what, str(context.get("message", "event loop")), exc)
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
