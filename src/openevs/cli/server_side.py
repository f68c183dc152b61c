"""Server-side commands: serve (all-in-one), api, worker, agent, witness, db upgrade."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
import uvicorn
import yaml
from rich.console import Console

from openevs.agent.__main__ import agent
from openevs.cli.server_metrics import metrics_endpoints, prometheus_targets, start_metrics
from openevs.config import ConfigError, Settings, load_settings
from openevs.db.session import Database, upgrade
from openevs.logs import configure_logging
from openevs.runtime import Runtime
from openevs.security import SecurityError
from openevs.security.pki import CA_CERT, bundle_that_issued
from openevs.security.sealing import Sealer, SealError
from openevs.security.tls import client_context, public_server_context
from openevs.services import identity
from openevs.services.sealing import check_key
from openevs.witness.__main__ import witness

err = Console(stderr=True)
out = Console()


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def controller_settings_or_exit() -> Settings:
    """Settings of a process that calls the agents (serve, api, worker)."""
    settings = settings_or_exit()
    _check_control_tls(settings)
    return settings


def _check_control_tls(settings: Settings) -> None:
    """https agent URLs need the controller's certificate, and it must be usable: exit 2 if not."""
    https = sorted(az for az, url in settings.agent_urls.items() if url.startswith("https://"))
    if not https:
        return
    files = settings.control_tls_files()
    problem = ""
    if files is None:
        problem = (
            f"the agents of {', '.join(https)} are https, but the controller has no certificate: "
            f"`openevs admin pki issue --controller` (into {settings.pki_dir()}) "
            "or OPENEVS_CONTROL_TLS_CERT/_KEY/_CA"
        )
    else:
        try:
            client_context(files)
        except SecurityError as exc:
            problem = f"the controller's certificate: {exc.message}"
    if problem:
        err.print(f"[red]configuration error:[/red] {problem}")
        raise typer.Exit(2)


def _logging(settings: Settings) -> None:
    configure_logging(settings.log_format)


def api_ca_file(settings: Settings) -> Path | None:
    """The CA bundle clients verify the API's certificate with (None: plain HTTP, or the system's).

    OPENEVS_TLS_CA when set; else the deployment CA bundle (next to the
    certificate, or in <data_dir>/pki) if it issued the certificate.
    """
    if settings.tls_cert is None:
        return None
    if settings.tls_ca is not None:
        return settings.tls_ca.resolve()
    candidates = [settings.tls_cert.parent / CA_CERT, settings.pki_dir() / CA_CERT]
    try:
        found = bundle_that_issued(settings.tls_cert, candidates)
    except SecurityError:
        return None  # the certificate itself is unreadable; api_tls_context says so
    return found.resolve() if found else None


def api_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server context of the public API, or None for plain HTTP; exit 2 if the files do not work."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        return public_server_context(settings.tls_cert, settings.tls_key)
    except SecurityError as exc:
        err.print(f"[red]configuration error:[/red] OPENEVS_TLS_CERT/OPENEVS_TLS_KEY: {exc.message}")
        raise typer.Exit(2) from exc


def clouds_yaml(settings: Settings, password: str | None) -> str:
    """The clouds.yaml of cloud `openevs` (admin in project admin) for openstacksdk and our client."""
    cloud: dict[str, object] = {
        "auth": {
            "auth_url": f"{settings.endpoint}/v3",
            "username": "admin",
            "password": password or "<the admin password>",
            "project_name": "admin",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": settings.region,
        "identity_api_version": 3,
        "block_storage_api_version": 2,
        "volume_api_version": 2,
    }
    ca = api_ca_file(settings)
    if ca is not None:
        cloud["cacert"] = str(ca)
    text: str = yaml.safe_dump({"clouds": {"openevs": cloud}}, sort_keys=False, default_flow_style=False)
    return text


def sealer_or_exit(settings: Settings) -> Sealer:
    """The deployment's sealing key file (made with a new key if there is none); exit 2 if unusable."""
    try:
        sealer, made = Sealer.load_or_create(path := settings.sealing_key_path())
    except (SealError, OSError) as exc:
        err.print(f"[red]configuration error:[/red] OPENEVS_SECRETS_KEY_FILE: {exc}")
        raise typer.Exit(2) from exc
    if made:
        err.print(f"sealing key created: {path} (copy it to every api and worker host)")
    return sealer


def prepare(settings: Settings) -> tuple[Database, str | None, Sealer]:
    """Create the data dir, migrate, check the sealing key, bootstrap the admin (new password or None)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sealer = sealer_or_exit(settings)
    upgrade(settings.db_url, sealer)
    db = Database(settings.db_url)
    try:
        check_key(db, sealer)
    except SealError as exc:
        db.dispose()
        err.print(f"[red]configuration error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    with db.session() as session:
        created = identity.bootstrap(session, settings.admin_password)
    return db, created, sealer


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _write_endpoints(settings: Settings, metrics: dict[str, Any]) -> None:
    """<data_dir>/endpoints.json (the API and every /metrics URL) and
    <data_dir>/prometheus-targets.json (the same as file_sd targets for Prometheus)."""
    _write_json(settings.data_dir / "endpoints.json", {"api": settings.endpoint, "metrics": metrics})
    _write_json(settings.data_dir / "prometheus-targets.json", prometheus_targets(metrics))


def _announce(settings: Settings, created: str | None, metrics_url: str | None = None) -> None:
    password = created or settings.admin_password or None
    out.print(f"openevs API: [bold]{settings.endpoint}[/bold]  (identity: {settings.endpoint}/v3)")
    metrics = metrics_endpoints(settings, metrics_url)
    if metrics["controller"]:
        out.print(f"metrics: controller {metrics['controller']}")
    for az, url in metrics["agents"].items():
        out.print(f"metrics: agent {az} {url}")
    _write_endpoints(settings, metrics)
    if created and not settings.admin_password:
        out.print(f"admin password (generated, shown once): [bold]{created}[/bold]")
    elif created:
        out.print("admin password: the value of OPENEVS_ADMIN_PASSWORD")
    if settings.tls_cert is not None:
        ca = api_ca_file(settings)
        out.print(f"HTTPS with {settings.tls_cert}; clients verify it with {ca or 'the system CAs'}")
    snippet = clouds_yaml(settings, password)
    path = settings.data_dir / "clouds.yaml"
    if password:
        _write_private(path, snippet)
    # A password the operator chose is theirs to know: it never goes to stdout (and so to
    # the service's logs); only a generated one is shown, once, since nobody knows it yet.
    shown = created if created and not settings.admin_password else None
    print("clouds.yaml:\n" + clouds_yaml(settings, shown))
    if password:
        print(f"(also written to {path}: OS_CLIENT_CONFIG_FILE={path} OS_CLOUD=openevs)")
    sys.stdout.flush()


def _write_private(path: Path, text: str) -> None:
    """Write a credentials file readable by its owner only, from its first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


class _ApiServer(uvicorn.Server):
    """uvicorn that returns after a SIGTERM/SIGINT shutdown instead of re-raising
    the signal, so the caller's cleanup (reconciler, agents, database) still runs
    and the process exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def _run_api(runtime: Runtime, tls: ssl.SSLContext | None) -> None:
    from openevs.api.app import create_app

    host, port = runtime.settings.listen_host_port
    tls_options: dict[str, Any] = {}
    if tls is not None:
        tls_options["ssl_context_factory"] = lambda _config, _default: tls
    config = uvicorn.Config(
        create_app(runtime),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        limit_concurrency=512,
        h11_max_incomplete_event_size=16 * 1024,
        **tls_options,
    )
    _ApiServer(config).run()


def _agent_clients(settings: Settings, supervisor: object | None) -> dict[str, object]:
    from openevs.agent.client import HttpAgentClient

    clients: dict[str, object] = {}
    for az in settings.azs:
        if az in settings.agent_urls:
            clients[az] = HttpAgentClient(az, settings.agent_urls[az], tls=settings.control_tls_files())
        elif supervisor is not None:
            clients[az] = supervisor.client_for(az)  # type: ignore[attr-defined]
        else:
            from openevs.agent.supervisor import control_socket_path

            sock = control_socket_path(settings.agent_dir(), az)
            clients[az] = HttpAgentClient(az, f"unix:{sock}")
    return clients


def serve() -> None:
    """Run everything on this machine: API, reconciler and one storage agent per AZ."""
    from openevs.agent.supervisor import AgentSupervisor
    from openevs.reconciler.loop import Reconciler

    settings = controller_settings_or_exit()
    _logging(settings)
    tls = api_tls_context(settings)
    db, created, sealer = prepare(settings)
    supervisor = AgentSupervisor(settings)
    supervisor.start()
    runtime = Runtime(settings, db, _agent_clients(settings, supervisor), sealer=sealer)  # type: ignore[arg-type]
    reconciler = Reconciler(runtime)
    try:
        supervisor.wait_ready(timeout_s=30)
    except Exception as exc:  # noqa: BLE001 - the service runs; the AZ shows unavailable
        err.print(f"[yellow]warning:[/yellow] not every storage agent is up yet: {exc}")
    reconciler.watcher.check()  # AZ health and NBD addresses of this run before the API answers
    reconciler.start()
    metrics = start_metrics(runtime)
    _announce(settings, created, metrics.base_url if metrics else None)
    try:
        _run_api(runtime, tls)
    finally:
        if metrics is not None:
            metrics.stop()
        reconciler.stop()
        supervisor.stop()
        runtime.close()


def api() -> None:
    """Run the HTTP(S) API only (with `openevs worker` elsewhere, on PostgreSQL)."""
    settings = controller_settings_or_exit()
    _logging(settings)
    tls = api_tls_context(settings)
    db, created, sealer = prepare(settings)
    runtime = Runtime(settings, db, _agent_clients(settings, None), sealer=sealer)  # type: ignore[arg-type]
    metrics = start_metrics(runtime)
    _announce(settings, created, metrics.base_url if metrics else None)
    try:
        _run_api(runtime, tls)
    finally:
        if metrics is not None:
            metrics.stop()
        runtime.close()


def worker() -> None:
    """Run the reconciler only: drives every resource in a transitional state."""
    from openevs.reconciler.loop import Reconciler

    settings = controller_settings_or_exit()
    _logging(settings)
    db, _, sealer = prepare(settings)
    runtime = Runtime(settings, db, _agent_clients(settings, None), sealer=sealer)  # type: ignore[arg-type]
    reconciler = Reconciler(runtime)
    metrics = start_metrics(runtime)
    if metrics is not None:
        out.print(f"metrics: worker {metrics.base_url}/metrics")
    try:
        reconciler.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if metrics is not None:
            metrics.stop()
        runtime.close()


db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every Alembic migration to OPENEVS_DATABASE_URL (or the embedded SQLite)."""
    settings = settings_or_exit()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url, sealer_or_exit(settings))
    out.print(f"database at newest revision: {settings.db_url.split('@')[-1]}")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(api)
    app.command()(worker)
    app.command()(agent)
    app.command()(witness)
    app.add_typer(db_app, name="db")
