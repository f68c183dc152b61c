"""The controller's Prometheus registry and the few metrics it bumps itself.

`ControllerMetrics` is built once per controller process (it lives in the
`Runtime`): the API's middleware observes every HTTP request, the reconciler
every pass and its backlog per resource kind. Everything else the
controller shows (pairs, groups, agents) is read at scrape time by the
collector in `api/metrics.py`. Names are in `docs/monitoring.md`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PASS_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["method", "route", "status"]
        self.http_requests = Counter(
            "openevs_http_requests", "HTTP requests of the API, by route template and status code.",
            labels, registry=self.registry,
        )  # fmt: skip
        self.http_duration = Histogram(
            "openevs_http_request_duration_seconds", "Seconds the API took to answer.",
            labels, buckets=HTTP_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.reconcile_pass = Histogram(
            "openevs_reconciler_pass_duration_seconds", "Seconds one reconciler pass took.",
            buckets=PASS_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.reconcile_backlog = Gauge(
            "openevs_reconciler_backlog", "Resources in a transitional status at the last pass, by kind.",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        self.reconcile_errors = Counter(
            "openevs_reconciler_pass_errors", "Reconciler passes that failed.", registry=self.registry
        )
