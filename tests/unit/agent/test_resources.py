"""What counts as a resource shortage, and the quiet log of them (agent/resources.py)."""

from __future__ import annotations

import errno
import logging

import pytest

from openevs.agent.resources import ShortageLog, shortage_of


@pytest.mark.parametrize(
    ("exc", "what"),
    [
        (OSError(errno.EMFILE, "Too many open files"), "file descriptors"),
        (OSError(errno.ENFILE, "File table overflow"), "file descriptors (the system's table is full)"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk space in its pool"),
        (MemoryError(), "memory"),
        (OSError(errno.ENOENT, "No such file"), None),
        (ValueError("x"), None),
    ],
)
def test_shortages_are_named(exc: BaseException, what: str | None) -> None:
    assert shortage_of(exc) == what


def test_a_shortage_is_logged_once_per_interval_per_resource(caplog: pytest.LogCaptureFixture) -> None:
    log = ShortageLog(interval_s=3600)
    exc = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.WARNING, logger="openevs.agent.resources"):
        for _ in range(100):
            log.report("file descriptors", "accept", exc)
        log.report("memory", "PUT /volumes/v", MemoryError())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "short of file descriptors" in messages[0] and "short of memory" in messages[1]
    assert all(r.exc_info is None for r in caplog.records)  # never a traceback
