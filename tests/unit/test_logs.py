"""logs.py: JSON lines with the resource ids, and one record per distinct error per interval."""

from __future__ import annotations

import json
import logging

from openevs.logs import JsonFormatter, RepeatFilter

PAIR = "d608626e-cdb8-4c36-ab96-a68fa221a3db"


def record(msg: str, *args: object, level: int = logging.ERROR, exc: BaseException | None = None,
           name: str = "openevs.reconciler") -> logging.LogRecord:  # fmt: skip
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def test_a_json_line_names_the_resources_of_its_message() -> None:
    line = json.loads(JsonFormatter().format(record("pair %s: observe failed", PAIR, exc=ValueError("x"))))
    assert line["level"] == "error" and line["logger"] == "openevs.reconciler"
    assert line["message"] == f"pair {PAIR}: observe failed"
    assert line["ids"] == [PAIR]
    assert "ValueError: x" in line["exception"]
    assert "ids" not in json.loads(JsonFormatter().format(record("nothing to name")))


def test_repeats_of_one_error_are_dropped_within_the_interval_and_counted_after() -> None:
    now = [0.0]
    flt = RepeatFilter(interval_s=60, clock=lambda: now[0])
    assert flt.filter(record("pair %s: step failed", PAIR, exc=OSError()))
    for t in (1, 10, 59):
        now[0] = t
        assert not flt.filter(record("pair %s: step failed", PAIR, exc=OSError()))
    assert flt.filter(record("pair %s: other failure", PAIR, exc=OSError()))  # another error: written
    assert flt.filter(record("pair %s: step failed", PAIR, exc=KeyError()))  # another kind: written
    assert flt.filter(record("fine", level=logging.INFO))  # below WARNING: never filtered
    now[0] = 61
    after = record("pair %s: step failed", PAIR, exc=OSError())
    assert flt.filter(after)
    assert getattr(after, "suppressed", 0) == 3 and "3 more like this" in after.getMessage()
