"""Logging for operators: text or JSON lines, resource ids as fields, no traceback storms.

`configure_logging(fmt)` is called once by every server-side command
(`serve`, `api`, `worker`, `agent`): `text` (the default) is the classic
`time level logger: message`; `json` (`OPENEVS_LOG_FORMAT=json`, `openevs
agent --log-format json`) writes one JSON object per line with `ts`,
`level`, `logger`, `message`, the resource ids the message names (`ids`:
every UUID in it, the way every log line of openevs names its resource) and
`exception` when there is one.

`RepeatFilter` keeps a failure that repeats from flooding the log: the first
record of a distinct error (logger, message template, exception type) in
an interval is written in full; the repeats within `interval_s` are
dropped, and the next one after the interval says how many were.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        ids = list(dict.fromkeys(UUID.findall(message)))
        if ids:
            line["ids"] = ids
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            line["suppressed"] = suppressed
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class RepeatFilter(logging.Filter):
    """One record per distinct error per interval (see the module's docstring)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}  # key -> (first seen, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, str(record.msg), kind)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        dropped = seen[1] if seen is not None else 0
        self._seen[key] = (now, 0)
        if len(self._seen) > 1000:  # forget the oldest: a bounded table
            for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                del self._seen[old]
        if dropped:
            record.suppressed = dropped
            if isinstance(record.msg, str):
                record.msg = f"{record.msg} ({dropped} more like this in the last {self.interval_s:g} s)"
        return True


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """The root logger of a server-side process: stderr, `fmt`, repeats filtered."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
