"""How much a test tries: fewer examples in the suite CI runs, the full count
with OPENEVS_LONG=1 (scripts/fault-run), so the suite keeps its time budget."""

from __future__ import annotations

import os

LONG = os.environ.get("OPENEVS_LONG") == "1"


def examples(ci: int, long: int) -> int:
    """Hypothesis examples: `ci` in the CI suite, `long` in the long run."""
    return long if LONG else ci
