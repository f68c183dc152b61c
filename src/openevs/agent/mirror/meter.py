"""The resync meter of one replicated volume: its rate and ETA, and the lag.

Sans-IO (the caller passes the clock). `observe()` takes a sample of the
bytes copied so far and the bytes still to copy; the rate is the bytes
copied over the samples of the last `WINDOW_S` seconds, and the ETA is the
bytes left over the *net* drain rate (how fast what is left shrinks), so a
user who keeps writing while the sync runs makes the ETA longer, not wrong.
No drain (paused, or writes as fast as the copy): no ETA.

The lag (`lag_s`) is an upper bound: the seconds since the DR disk last
held every acknowledged write (`MirrorState.behind_since`, set by whoever
first makes a region differ, cleared when nothing is left to copy).
"""

from __future__ import annotations

from collections import deque

WINDOW_S = 10.0
MIN_SPAN_S = 0.5  # no rate from samples closer together than this
MIN_GAP_S = 0.05  # samples closer than this replace the last one


class ResyncMeter:
    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int]] = deque()  # (time, copied total, left)

    def observe(self, now: float, copied_total_bytes: int, left_bytes: int) -> None:
        samples = self._samples
        if samples and now - samples[-1][0] < MIN_GAP_S:
            samples[-1] = (samples[-1][0], copied_total_bytes, left_bytes)
        else:
            samples.append((now, copied_total_bytes, left_bytes))
        while len(samples) > 2 and now - samples[1][0] >= WINDOW_S:
            samples.popleft()

    def _span(self, now: float) -> tuple[float, int, int] | None:
        """(seconds, bytes copied, bytes drained) over the window, or None."""
        samples = self._samples
        if len(samples) < 2:
            return None
        first, last = samples[0], samples[-1]
        if now - last[0] > WINDOW_S:  # no sample lately: nothing is being copied
            return None
        seconds = last[0] - first[0]
        if seconds < MIN_SPAN_S:
            return None
        return seconds, last[1] - first[1], first[2] - last[2]

    def rate_bytes_per_s(self, now: float) -> float:
        span = self._span(now)
        return 0.0 if span is None else max(0.0, span[1] / span[0])

    def eta_s(self, now: float) -> float | None:
        span = self._span(now)
        if not self._samples or self._samples[-1][2] == 0:
            return 0.0
        if span is None or span[2] <= 0:
            return None
        return self._samples[-1][2] / (span[2] / span[0])


def lag_s(behind_since: float | None, left_bytes: int, now: float) -> tuple[float, float | None]:
    """(the lag, the new behind_since): 0 and None when nothing is left to copy."""
    if left_bytes == 0:
        return 0.0, None
    since = now if behind_since is None else behind_since
    return max(0.0, now - since), since
