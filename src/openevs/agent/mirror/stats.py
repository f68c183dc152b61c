"""What the replication side of an agent counts: link requests, forwarded writes,
resync bytes and bitmap syncs.

One `MIRROR_STATS` per process (an agent is one process, like
prometheus-client's default registry). Counters are plain numbers bumped on
the event loop's thread (bitmap syncs: their duration is taken around the
thread hop, on the loop) and read by the agent's `/metrics` collector
(agent/metrics.py) on the same thread.
"""

from __future__ import annotations

from openevs.agent.nbd.stats import OpStats

LINK_OPS = ("write", "write_zeroes", "trim", "flush")


class MirrorStats:
    def __init__(self) -> None:
        # Requests on the links to peers, by op: count, bytes and round-trip time
        # (sent until the peer's answer arrived).
        self.link = {op: OpStats() for op in LINK_OPS}
        self.forwarded = OpStats()  # users' writes forwarded to a peer (a subset of link["write"])
        # Requests this agent served to its primaries on the link (link_server.py), by op:
        # count, bytes and service time (request parsed to the disk's answer).
        self.served = {op: OpStats() for op in LINK_OPS}
        self.resync_bytes = 0  # bytes the syncs copied to peers
        self.bitmap_sync = OpStats()  # fdatasync of dirty bitmaps (the activity log's flush)


MIRROR_STATS = MirrorStats()
