"""The controller's /metrics listener as the server commands start it, and the URLs
`serve` prints and writes for Prometheus (endpoints.json, prometheus-targets.json)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import typer
from rich.console import Console

from openevs.config import Settings
from openevs.runtime import Runtime
from openevs.security import SecurityError
from openevs.security.tls import public_server_context, require_client_certificates

err = Console(stderr=True)


def start_metrics(runtime: Runtime) -> Any:
    """The controller's /metrics listener (OPENEVS_METRICS_LISTEN), or None when turned off."""
    from openevs.api.metrics import MetricsListener

    listen = runtime.settings.metrics_listen
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    tls = None
    files = runtime.settings.metrics_tls_files()
    if files is not None:
        try:
            tls = public_server_context(*files)
            if (client_ca := runtime.settings.metrics_tls_client_ca) is not None:
                require_client_certificates(tls, client_ca)
        except SecurityError as exc:
            err.print(f"[red]configuration error:[/red] the /metrics listener's certificate: {exc.message}")
            raise typer.Exit(2) from exc
    try:
        return MetricsListener(runtime, host.strip("[]"), int(port), tls).start()
    except (OSError, ValueError) as exc:
        err.print(f"[red]configuration error:[/red] OPENEVS_METRICS_LISTEN={listen}: cannot listen: {exc}")
        raise typer.Exit(2) from exc


def metrics_endpoints(settings: Settings, base_url: str | None) -> dict[str, Any]:
    """Every /metrics URL: the controller's, and each AZ's agent (a standalone agent's own
    plain-HTTP control API; else through the controller's listener: embedded agents, and
    agents on mutual TLS, which answer only the controller's certificate)."""
    agents: dict[str, str] = {}
    for az in settings.azs:
        url = settings.agent_urls.get(az, "")
        if url.startswith("http://"):
            agents[az] = url.rstrip("/") + "/metrics"
        elif base_url is not None:
            agents[az] = f"{base_url}/agents/{az}/metrics"
    return {"controller": None if base_url is None else f"{base_url}/metrics", "agents": agents}


def prometheus_targets(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The /metrics URLs as Prometheus file_sd target groups (labels: component, az)."""
    groups = []
    urls = [(metrics["controller"], {"component": "controller"})] if metrics["controller"] else []
    urls += [(url, {"component": "agent", "az": az}) for az, url in metrics["agents"].items()]
    for url, labels in urls:
        parts = urlsplit(url)
        if parts.path != "/metrics":
            labels["__metrics_path__"] = parts.path
        if parts.scheme != "http":
            labels["__scheme__"] = parts.scheme
        groups.append({"targets": [parts.netloc], "labels": labels})
    return groups
