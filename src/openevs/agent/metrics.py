"""The agent's `/metrics` (Prometheus text format), read from live state at scrape time.

Nothing here is bumped per request: the NBD server (nbd/stats.py) and the
replication side (mirror/stats.py) keep plain counters, and `AgentCollector`
turns them, the pool and every replica's state into metric families when
Prometheus asks. The collector runs on the event loop's thread (the one
that bumps the counters); only the pool's file walk runs in a thread first.

Per-volume NBD series exist only for the volumes the agent was told to
count (`--metrics-volumes`), so 10,000 volumes do not make 10,000 series.
Names and labels are in `docs/monitoring.md`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from openevs.agent.mirror.stats import MIRROR_STATS
from openevs.agent.nbd.stats import LATENCY_BUCKETS_S, NbdStats, OpStats, op_name
from openevs.agent.node import StorageNode
from openevs.domain.replication import ReplicationStatus, Role

_BOUNDS = [*(f"{b:g}" for b in LATENCY_BUCKETS_S), "+Inf"]


def histogram_buckets(op: OpStats) -> list[tuple[str, float]]:
    """Cumulative `le` buckets of an OpStats (which counts per slot)."""
    total = 0
    out = []
    for bound, count in zip(_BOUNDS, op.buckets, strict=True):
        total += count
        out.append((bound, float(total)))
    return out


def op_families(
    prefix: str, what: str, labelled: Iterable[tuple[list[str], OpStats]], label_names: list[str]
) -> list[Metric]:
    """`<prefix>s_total`, `<prefix>_bytes_total` and `<prefix>_duration_seconds` of OpStats."""
    requests = CounterMetricFamily(f"{prefix}s", f"{what}: requests.", labels=label_names)
    size = CounterMetricFamily(f"{prefix}_bytes", f"{what}: bytes the requests covered.", labels=label_names)
    latency = HistogramMetricFamily(
        f"{prefix}_duration_seconds", f"{what}: seconds until the answer.", labels=label_names
    )
    for labels, op in labelled:
        requests.add_metric(labels, op.requests)
        size.add_metric(labels, op.bytes)
        latency.add_metric(labels, histogram_buckets(op), op.sum_s)
    return [requests, size, latency]


def _by_op(stats: NbdStats, *extra: str) -> Iterator[tuple[list[str], OpStats]]:
    for cmd, op in stats.by_command.items():
        yield [*extra, op_name(cmd)], op


@dataclass(frozen=True)
class PoolUsage:
    capacity_bytes: int
    free_bytes: int
    allocated_bytes: int
    provisioned_bytes: int
    volumes: int


def pool_usage(node: StorageNode) -> PoolUsage:
    """Blocking (statvfs and one stat per volume file): run it in a thread."""
    capacity, free = node.pool.capacity()
    volumes = node.pool.list()
    return PoolUsage(
        capacity_bytes=capacity,
        free_bytes=free,
        allocated_bytes=sum(v.allocated_bytes for v in volumes),
        provisioned_bytes=sum(v.size_bytes for v in volumes),
        volumes=len(volumes),
    )


def _gauge(name: str, doc: str, value: float, labels: Mapping[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


class AgentCollector(Collector):
    """Every family of one agent; `usage` is refreshed (in a thread) before each scrape."""

    def __init__(self, node: StorageNode) -> None:
        self.node = node
        self.usage: PoolUsage | None = None

    def collect(self) -> Iterable[Metric]:
        node = self.node
        az = {"az": node.az}
        yield _gauge("openevs_agent_info", "This agent: its AZ and boot id.", 1,
                     {"az": node.az, "boot_id": node.boot_id})  # fmt: skip
        yield from op_families("openevs_nbd_request", "NBD requests served", _by_op(node.nbd.stats), ["op"])
        per_volume = (
            item for vid, stats in sorted(node.nbd.volume_stats.items()) for item in _by_op(stats, vid)
        )
        yield from op_families(
            "openevs_nbd_volume_request", "NBD requests served, of the counted volumes", per_volume,
            ["volume_id", "op"],
        )  # fmt: skip
        yield _gauge("openevs_nbd_connections", "Open NBD connections (users and peers).",
                     node.nbd.connection_count())  # fmt: skip
        if self.usage is not None:
            u = self.usage
            yield _gauge("openevs_pool_capacity_bytes", "Size of the filesystem holding the pool.",
                         u.capacity_bytes, az)  # fmt: skip
            yield _gauge("openevs_pool_free_bytes", "Bytes free for the pool.", u.free_bytes, az)
            yield _gauge("openevs_pool_allocated_bytes", "Bytes the pool's volume files occupy.",
                         u.allocated_bytes, az)  # fmt: skip
            yield _gauge("openevs_pool_provisioned_bytes", "Sum of the pool's volume sizes.",
                         u.provisioned_bytes, az)  # fmt: skip
            yield _gauge("openevs_pool_volumes", "Volumes in the pool.", u.volumes, az)
        yield from self._replication()

    def _replication(self) -> Iterator[Metric]:
        stats = MIRROR_STATS
        yield from op_families(
            "openevs_replication_link_request", "Requests on the replication links to peers",
            (([op], s) for op, s in stats.link.items()), ["op"],
        )  # fmt: skip
        yield from op_families(
            "openevs_replication_link_served_request", "Requests served to primaries on the link",
            (([op], s) for op, s in stats.served.items()), ["op"],
        )  # fmt: skip
        fwd, resync, writes = stats.forwarded, stats.resync_bytes, stats.forwarded.requests
        yield CounterMetricFamily("openevs_replication_forwarded_writes", "Writes forwarded.", value=writes)
        yield CounterMetricFamily("openevs_replication_forwarded_bytes", "Bytes forwarded.", value=fwd.bytes)
        yield CounterMetricFamily("openevs_replication_resync_bytes", "Bytes the syncs copied.", value=resync)
        bitmap = HistogramMetricFamily(
            "openevs_replication_bitmap_sync_duration_seconds",
            "fdatasync of the dirty bitmaps (the activity log's flush).",
        )
        bitmap.add_metric([], histogram_buckets(stats.bitmap_sync), stats.bitmap_sync.sum_s)
        yield bitmap
        yield from self._replicas()

    def _replicas(self) -> Iterator[Metric]:
        names = ["volume_id", "pair_id", "group_id", "role"]
        docs = {
            "dirty": ("dirty_bytes", "Bytes the peer may lack."),
            "link": ("link_up", "1 when the link to the peer is up."),
            "rate": ("resync_rate_bytes_per_second", "Bytes/s the sync copies (last 10 s)."),
            "eta": ("resync_eta_seconds", "Seconds until the sync ends (+Inf: not draining)."),
            "lag": ("lag_seconds", "Seconds since the peer last held every acknowledged write."),
        }
        families = {
            key: GaugeMetricFamily(f"openevs_replica_{name}", doc, labels=names)
            for key, (name, doc) in docs.items()
        }
        repl = self.node.replication
        for volume_id in sorted(repl.replicas):
            state = repl.describe(volume_id)
            labels = [volume_id, state.pair_id, state.group_id or "", str(state.role)]
            families["dirty"].add_metric(labels, state.dirty_bytes)
            families["link"].add_metric(labels, float(state.link_up))
            if state.role is not Role.PRIMARY:
                continue
            families["rate"].add_metric(labels, state.resync_rate_bytes_per_s)
            families["lag"].add_metric(labels, state.lag_s)
            if state.resync_eta_s is not None:
                families["eta"].add_metric(labels, state.resync_eta_s)
            elif state.replication_status is ReplicationStatus.COPYING:
                families["eta"].add_metric(labels, math.inf)
        yield from families.values()


def metrics_router(node: StorageNode) -> APIRouter:
    """`GET /metrics` of the agent's control API."""
    collector = AgentCollector(node)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        collector.usage = await asyncio.to_thread(pool_usage, node)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
