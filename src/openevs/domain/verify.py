"""Online verify of a pair: what a run is, and what a compared slice adds to it.

Pure: the reconciler (reconciler/verify.py) asks both agents for the keyed
digests of one slice of the disk and hands them here. A region counts as
checked when both digests could be compared; as skipped when the
production agent said its digest proves nothing (written, dirty or copied
while the check ran) or the slice took too long to trust; as mismatched
when the digests differ otherwise. The run is stored as JSON in the pair
row (`verify`), so a restarted reconciler resumes it where it stood.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

REGION_BYTES = 64 * 1024  # the agents' region (agent/mirror/engine.py)
SHOWN_RANGES = 100  # mismatched ranges kept for the view; every one is marked dirty


@dataclass
class VerifyRun:
    key: str  # the hash key of this run (hex)
    total_bytes: int
    started_at: str
    state: str = "running"  # running | finished | failed
    offset_bytes: int = 0
    checked_bytes: int = 0
    mismatched_bytes: int = 0
    skipped_bytes: int = 0
    mismatched_ranges: list[list[int]] = field(default_factory=list)  # [offset, length]
    finished_at: str | None = None
    error: str | None = None

    @classmethod
    def load(cls, raw: dict[str, Any]) -> VerifyRun:
        return cls(**raw)

    def dump(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def view(self) -> dict[str, Any]:
        """The pair view's `verify` extra (no key, no cursor)."""
        progress = 100 if not self.total_bytes else min(100, self.offset_bytes * 100 // self.total_bytes)
        return {
            "status": self.state,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": str(progress),
            "total_bytes": self.total_bytes,
            "checked_bytes": self.checked_bytes,
            "mismatched_bytes": self.mismatched_bytes,
            "skipped_bytes": self.skipped_bytes,
            "mismatched_ranges": self.mismatched_ranges,
            "error": self.error,
        }


def compare_slice(
    first_region: int, production: list[str], dr: list[str], skip: Iterable[int]
) -> tuple[list[int], list[int]]:
    """(mismatched, skipped) regions of one slice."""
    skipped = set(skip)
    mismatched, skipped_here = [], []
    for index, (ours, theirs) in enumerate(zip(production, dr, strict=True)):
        region = first_region + index
        if region in skipped:
            skipped_here.append(region)
        elif ours != theirs:
            mismatched.append(region)
    return mismatched, skipped_here


def region_ranges(regions: Iterable[int], end_bytes: int) -> list[list[int]]:
    """Merged [offset, length] byte ranges of regions, cut at `end_bytes`."""
    out: list[list[int]] = []
    for region in sorted(set(regions)):
        offset = region * REGION_BYTES
        length = min(REGION_BYTES, end_bytes - offset)
        if length <= 0:
            continue
        if out and out[-1][0] + out[-1][1] == offset:
            out[-1][1] += length
        else:
            out.append([offset, length])
    return out


def add_slice(run: VerifyRun, length: int, mismatched: list[int], skipped: list[int]) -> list[list[int]]:
    """Count one compared slice of `length` bytes at the run's offset; its mismatched ranges."""
    end = run.offset_bytes + length
    bad = region_ranges(mismatched, end)
    skipped_bytes = sum(r[1] for r in region_ranges(skipped, end))
    bad_bytes = sum(r[1] for r in bad)
    run.mismatched_bytes += bad_bytes
    run.skipped_bytes += skipped_bytes
    run.checked_bytes += length - skipped_bytes
    for r in bad:
        if run.mismatched_ranges and sum(run.mismatched_ranges[-1]) == r[0]:
            run.mismatched_ranges[-1][1] += r[1]
        elif len(run.mismatched_ranges) < SHOWN_RANGES:
            run.mismatched_ranges.append(list(r))
    run.offset_bytes = end
    return bad
