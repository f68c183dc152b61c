"""A token bucket for resync bandwidth (bytes/s), sans-IO: the caller passes the clock.

`reserve(now, n)` takes n bytes' worth of tokens and says how long to wait
before sending them (0: at once); a rate of 0 is unlimited. The bucket holds
at most `burst_s` seconds of tokens, so an idle sync does not bank an
unbounded burst. Reserving ahead (tokens going negative) is what keeps a
pipelined sender at the rate: each chunk waits for its own share.
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate_bytes_per_s: int = 0, burst_s: float = 0.25) -> None:
        self.rate_bytes_per_s = rate_bytes_per_s
        self.burst_s = burst_s
        self._tokens = 0.0
        self._at: float | None = None

    def set_rate(self, rate_bytes_per_s: int) -> None:
        if rate_bytes_per_s != self.rate_bytes_per_s:
            self.rate_bytes_per_s = rate_bytes_per_s
            self._at = None  # start afresh at the new rate

    def reserve(self, now: float, nbytes: int) -> float:
        rate = self.rate_bytes_per_s
        if rate <= 0:
            return 0.0
        if self._at is None:
            self._tokens, self._at = rate * self.burst_s, now
        self._tokens = min(rate * self.burst_s, self._tokens + (now - self._at) * rate)
        self._at = now
        self._tokens -= nbytes
        return 0.0 if self._tokens >= 0 else -self._tokens / rate
