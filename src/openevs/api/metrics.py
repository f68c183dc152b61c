"""The controller's `/metrics`: the fleet collector, the HTTP middleware and the listener.

- `FleetCollector` turns `services.monitoring.read_fleet` into metric
  families at scrape time: per pair and per group (rolled up from its
  members), and per agent.
- `HttpMetrics` (pure ASGI, outermost) observes every API request by method,
  route *template* (`/v2/{project_id}/volumes/{volume_id}`, never the ids
  themselves; `(unmatched)` for paths no route knows) and status code.
- `MetricsListener` serves `/metrics` on its own address
  (`OPENEVS_METRICS_LISTEN`), never on the public API, and
  `/agents/<az>/metrics`: the metrics of that AZ's agent, fetched from its
  control API (the way to scrape the embedded agents of `openevs serve`,
  whose control API is a unix socket). An agent that cannot be reached
  answers 503, so Prometheus marks that target down.
"""

from __future__ import annotations

import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openevs.agent.client import HttpAgentClient
from openevs.contract import AgentError
from openevs.domain.replication import GroupStatus, PairStatus, ReplicationStatus
from openevs.metrics import ControllerMetrics
from openevs.runtime import Runtime
from openevs.services.monitoring import FleetReading, PairReading, read_fleet

log = logging.getLogger(__name__)

PAIR_LABELS = ["pair_id", "project_id", "group_id", "production_az"]
GROUP_LABELS = ["group_id", "project_id", "priority_station"]
_REPLICATION_STATUSES = [str(s) for s in ReplicationStatus]


def _families(prefix: str, labels: list[str], docs: dict[str, str]) -> dict[str, GaugeMetricFamily]:
    return {key: GaugeMetricFamily(f"{prefix}_{key}", doc, labels=labels) for key, doc in docs.items()}


_LIVE_DOCS = {
    "dirty_bytes": "Bytes the DR disk may lack (the production agent's dirty bitmap).",
    "resync_rate_bytes_per_second": "Bytes/s the sync copies (last 10 s).",
    "resync_eta_seconds": "Seconds until the sync ends (+Inf: it does not drain).",
    "lag_seconds": "Seconds since the DR disk last held every acknowledged write (0 while in sync).",
    "link_up": "1 when the replication link is up.",
    "mirroring": "1 when mirroring is on (the pair is meant to be active; 0: paused).",
    "witness_reachable": "1 when the production agent reaches the witness (arbitrated pairs).",
}


class FleetCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to read at registration: the families are known only per scrape

    def collect(self) -> Iterable[Metric]:
        fleet = read_fleet(self.runtime)
        yield from self._agents(fleet)
        yield from self._pairs(fleet.pairs)
        yield from self._groups(fleet)

    @staticmethod
    def _agents(fleet: FleetReading) -> Iterator[Metric]:
        up = _gauge("openevs_agent_up", "1 when the controller reached the AZ's agent.", ["az"])
        checked = _gauge("openevs_agent_checked_timestamp_seconds", "Last check of the agent.", ["az"])
        for agent in fleet.agents:
            up.add_metric([agent.az], float(agent.up))
            if agent.checked_at_s is not None:
                checked.add_metric([agent.az], agent.checked_at_s)
        yield up
        yield checked

    def _pairs(self, pairs: list[PairReading]) -> Iterator[Metric]:
        extra = ["name", "production_volume_id", "dr_volume_id", "dr_az"]
        info = _gauge("openevs_pair_info", "A pair: its name and disks (always 1).", PAIR_LABELS + extra)
        status = _gauge("openevs_pair_status", "1 for the pair's status.", [*PAIR_LABELS, "status"])
        repl = _gauge("openevs_pair_replication_status", "1 for the pair's replication_status.",
                      [*PAIR_LABELS, "replication_status"])  # fmt: skip
        fault = _gauge("openevs_pair_fault_level", "The pair's fault_level: 0, 2 or 5.", PAIR_LABELS)
        progress = _gauge("openevs_pair_progress_ratio", "The pair's progress, 0..1.", PAIR_LABELS)
        live = _families("openevs_pair", PAIR_LABELS, _LIVE_DOCS)
        for reading in pairs:
            row = reading.row
            labels = [row.id, row.project_id, row.group_id or "", reading.production_az]
            info.add_metric([*labels, row.name, row.production_volume_id, row.dr_volume_id, reading.dr_az], 1)
            _one_hot(status, labels, [str(v) for v in PairStatus], row.status)
            _one_hot(repl, labels, _REPLICATION_STATUSES, row.replication_status)
            fault.add_metric(labels, float(row.fault_level or 0))
            if row.progress is not None:
                progress.add_metric(labels, int(row.progress) / 100)
            if reading.live is not None:
                for key, value in _live_values(reading).items():
                    live[key].add_metric(labels, value)
        yield from (info, status, repl, fault, progress, *live.values())

    def _groups(self, fleet: FleetReading) -> Iterator[Metric]:
        members: dict[str, list[PairReading]] = {}
        for reading in fleet.pairs:
            if reading.row.group_id:
                members.setdefault(reading.row.group_id, []).append(reading)
        info = _gauge("openevs_group_info", "A consistency group (always 1).", [*GROUP_LABELS, "name"])
        status = _gauge("openevs_group_status", "1 for the group's status.", [*GROUP_LABELS, "status"])
        repl = _gauge("openevs_group_replication_status", "1 for the group's replication_status.",
                      [*GROUP_LABELS, "replication_status"])  # fmt: skip
        fault = _gauge("openevs_group_fault_level", "The group's fault_level.", GROUP_LABELS)
        progress = _gauge("openevs_group_progress_ratio", "The group's progress, 0..1.", GROUP_LABELS)
        count = _gauge("openevs_group_pairs", "Member pairs of the group.", GROUP_LABELS)
        live = _families("openevs_group", GROUP_LABELS, _LIVE_DOCS)
        for group in fleet.groups:
            labels = [group.id, group.project_id, group.priority_station]
            info.add_metric([*labels, group.name], 1)
            _one_hot(status, labels, [str(v) for v in GroupStatus], group.status)
            _one_hot(repl, labels, _REPLICATION_STATUSES, group.replication_status)
            fault.add_metric(labels, float(group.fault_level or 0))
            if group.progress is not None:
                progress.add_metric(labels, int(group.progress) / 100)
            group_members = members.get(group.id, [])
            count.add_metric(labels, len(group_members))
            for key, value in _rolled_up(group_members).items():
                live[key].add_metric(labels, value)
        yield from (info, status, repl, fault, progress, count, *live.values())


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _one_hot(family: GaugeMetricFamily, labels: list[str], values: list[str], current: str | None) -> None:
    """One series per possible value: 1 for the current one, 0 for the others."""
    for value in values:
        family.add_metric([*labels, value], float(current == value))


def _live_values(reading: PairReading) -> dict[str, float]:
    state = reading.live
    assert state is not None
    values = {
        "dirty_bytes": float(state.dirty_bytes),
        "resync_rate_bytes_per_second": state.resync_rate_bytes_per_s,
        "lag_seconds": state.lag_s,
        "link_up": float(state.link_up),
        "mirroring": float(state.mirroring),
    }
    if state.resync_eta_s is not None:
        values["resync_eta_seconds"] = state.resync_eta_s
    elif state.replication_status is ReplicationStatus.COPYING:
        values["resync_eta_seconds"] = math.inf
    if state.arbitration is not None:
        values["witness_reachable"] = float(state.arbitration.witness_reachable)
    return values


def _rolled_up(members: list[PairReading]) -> dict[str, float]:
    """A group's live values: sums of bytes and rates, the worst ETA, lag, link and witness.
    Only when every member was measured (a partial sum would understate)."""
    if not members or any(m.live is None for m in members):
        return {}
    each = [_live_values(m) for m in members]
    out = {
        "dirty_bytes": sum(v["dirty_bytes"] for v in each),
        "resync_rate_bytes_per_second": sum(v["resync_rate_bytes_per_second"] for v in each),
        "lag_seconds": max(v["lag_seconds"] for v in each),
        "link_up": min(v["link_up"] for v in each),
        "mirroring": min(v["mirroring"] for v in each),
    }
    etas = [v["resync_eta_seconds"] for v in each if "resync_eta_seconds" in v]
    if etas:
        out["resync_eta_seconds"] = max(etas)
    witnesses = [v["witness_reachable"] for v in each if "witness_reachable" in v]
    if witnesses:
        out["witness_reachable"] = min(witnesses)
    return out


# -- the API's HTTP metrics ----------------------------------------------------------


class HttpMetrics:
    """Pure ASGI middleware: one counter and one histogram observation per request."""

    def __init__(self, app: Any, metrics: ControllerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "(unmatched)"
            labels = (scope.get("method", ""), template, str(status))
            self.metrics.http_requests.labels(*labels).inc()
            self.metrics.http_duration.labels(*labels).observe(time.perf_counter() - started)


# -- the listener -----------------------------------------------------------------------


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that hung up, or a client that failed the TLS handshake: one line, no traceback.
        log.debug("metrics listener: connection from %s failed", client_address, exc_info=True)


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # a client that stalls (mid-handshake, say) frees its thread

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("metrics listener: " + format, *args)


StartResponse = Callable[[str, list[tuple[str, str]]], object]


class MetricsListener:
    """`/metrics` and `/agents/<az>/metrics` on their own address, in a daemon thread."""

    def __init__(self, runtime: Runtime, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.runtime = runtime
        self.registry = runtime.metrics.registry
        self.registry.register(FleetCollector(runtime))
        self._server = make_server(
            host, port, self._app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        if tls is not None:
            # The handshake runs in the request's thread (on its first read), not in the
            # accepting one, so a client that stalls in it delays nobody else.
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "http" if tls is None else "https"
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{self.scheme}://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self) -> MetricsListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"GET only\n")
        if path == "/metrics":
            body = generate_latest(self.registry)
            return _answer(start_response, "200 OK", body, CONTENT_TYPE_LATEST)
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "agents" and parts[2] == "metrics":
            return self._agent(parts[1], start_response)
        return _answer(start_response, "404 Not Found", b"try /metrics or /agents/<az>/metrics\n")

    def _agent(self, az: str, start_response: StartResponse) -> list[bytes]:
        client = self.runtime.agents.get(az)
        if not isinstance(client, HttpAgentClient):
            return _answer(start_response, "404 Not Found", f"no agent for AZ {az!r}\n".encode())
        try:
            body = client.metrics_text()
        except AgentError as exc:
            return _answer(start_response, "503 Service Unavailable", f"{exc}\n".encode())
        return _answer(start_response, "200 OK", body, CONTENT_TYPE_LATEST)


def _answer(
    start_response: StartResponse, status: str, body: bytes, content_type: str = "text/plain; charset=utf-8"
) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
