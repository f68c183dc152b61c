"""What the NBD server counts per operation: requests, bytes and a latency histogram.

Plain integers and lists, bumped on the event loop's thread by the
connections and read by the agent's `/metrics` collector on the same thread
(agent/metrics.py), so no lock is needed and the hot path costs one
`perf_counter()` pair, one `bisect` and a few additions per request.

Latency is the server's service time: from the request parsed to its reply
queued (a READ served from the page cache is queued at once; a WRITE waits
for the local write and, on a replicated volume, the peer's answer). It
does not include the time the reply spends in the socket.
"""

from __future__ import annotations

from bisect import bisect_left

from .constants import Command

# Upper bounds (seconds, `le` in Prometheus terms); one more slot counts +Inf.
LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class OpStats:
    """One operation's counters."""

    __slots__ = ("buckets", "bytes", "requests", "sum_s")

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.sum_s = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # not cumulative; the last is +Inf

    def observe(self, length_bytes: int, seconds: float) -> None:
        self.requests += 1
        self.bytes += length_bytes
        self.sum_s += seconds
        self.buckets[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1


class NbdStats:
    """Counters of one scope (a whole server, or one volume): an OpStats per command."""

    __slots__ = ("by_command",)

    def __init__(self) -> None:
        self.by_command: dict[Command, OpStats] = {
            cmd: OpStats() for cmd in Command if cmd is not Command.DISC
        }


def op_name(cmd: Command) -> str:
    """The `op` label of a command: read, write, flush, trim, cache, write_zeroes, block_status."""
    return cmd.name.lower()
