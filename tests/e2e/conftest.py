"""End-to-end harness: the real `openevs serve` as a subprocess on loopback.

`ServeProcess` starts serve with a data dir of its own, a free API port and
ephemeral NBD ports, waits until the API answers and every AZ's agent shows
available, and can stop (SIGTERM), kill (SIGKILL) and restart it on the same
data dir. Each run's stdout/stderr go to `serve-<n>.out` / `serve-<n>.err`
next to the data dir, and are quoted when something does not come up.

Clients are configured only from what serve printed or wrote: the
`clouds.yaml` in the data dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.conftest import PG_ADMIN_URL, _drop_pg_database, _pg_database, free_port
from tests.support.waiting import wait_for

ADMIN_PASSWORD = "e2e-admin-secret"
AZS = ("az1.dc1", "az2.dc2", "az3.dc3")
START_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 20.0

T = TypeVar("T")


def pid_alive(pid: int) -> bool:
    """True if pid runs and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


@dataclass
class Session:
    """A Keystone token of one project, and an httpx client that sends it."""

    base: str
    token: str
    project_id: str
    client: httpx.Client

    def url(self, path: str) -> str:
        return self.base + path.replace("{p}", self.project_id)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-Auth-Token": self.token, **kw.pop("headers", {})}
        return self.client.request(method, self.url(path), headers=headers, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.request("POST", path, json=json, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)

    def volumes(self) -> list[dict[str, Any]]:
        r = self.get("/v2/{p}/volumes/detail")
        assert r.status_code == 200, r.text
        return list(r.json()["volumes"])

    def servers(self) -> list[dict[str, Any]]:
        r = self.get("/v2.1/{p}/servers/detail")
        assert r.status_code == 200, r.text
        return list(r.json()["servers"])

    def azs(self) -> dict[str, bool]:
        r = self.get("/v2/{p}/os-availability-zone")
        assert r.status_code == 200, r.text
        return {z["zoneName"]: z["zoneState"]["available"] for z in r.json()["availabilityZoneInfo"]}


@dataclass
class ServeProcess:
    """One `openevs serve` data dir, run as a subprocess any number of times."""

    root: Path
    database_url: str = ""
    admin_password: str | None = ADMIN_PASSWORD  # None: serve generates and prints one
    extra_env: dict[str, str] = field(default_factory=dict)
    ca_file: Path | None = None  # with OPENEVS_TLS_CERT in extra_env: the CA bundle to verify it with
    command: str = "serve"  # or "api" / "worker" (a split deployment on PostgreSQL)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()

    # -- paths and settings ---------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def base(self) -> str:
        scheme = "https" if self.extra_env.get("OPENEVS_TLS_CERT") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify` for this serve: its CA bundle when it serves HTTPS."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    @property
    def clouds_yaml_path(self) -> Path:
        return self.data_dir / "clouds.yaml"

    @property
    def azs(self) -> tuple[str, ...]:
        return tuple(self.extra_env.get("OPENEVS_AZS", ",".join(AZS)).split(","))

    def pool_dir(self, az: str) -> Path:
        return self.data_dir / "pools" / az

    def log_paths(self, run: int | None = None) -> tuple[Path, Path]:
        n = self.runs if run is None else run
        return self.root / f"serve-{n}.out", self.root / f"serve-{n}.err"

    def env(self) -> dict[str, str]:
        """The environment of serve and of `openevs admin`: nothing inherited from OPENEVS_/OS_."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENEVS_", "OS_"))}
        env.update(
            OPENEVS_DATA_DIR=str(self.data_dir),
            OPENEVS_LISTEN=f"127.0.0.1:{self.port}",
            OPENEVS_NBD_PORT_BASE="0",
            OPENEVS_METRICS_LISTEN="127.0.0.1:0",  # endpoints.json says which port
            OPENEVS_HEALTH_INTERVAL_S="0.5",
            PYTHONUNBUFFERED="1",
        )
        if self.admin_password is not None:
            env["OPENEVS_ADMIN_PASSWORD"] = self.admin_password
        if self.database_url:
            env["OPENEVS_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    # -- lifecycle --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> ServeProcess:
        assert not self.running, "serve is already running"
        self.runs += 1
        out_path, err_path = self.log_paths()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "openevs.cli.main", self.command],
                cwd=self.root,  # no stray openevs.toml is picked up
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        if wait:
            self.wait_ready()
        return self

    def logs(self, run: int | None = None, tail_chars: int = 4000) -> str:
        out_path, err_path = self.log_paths(run)
        parts = []
        for path in (out_path, err_path):
            if path.exists():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-tail_chars:]}")
        return "\n".join(parts)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}\n{self.logs()}")

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until `GET /` answers and os-availability-zone shows every AZ available."""
        deadline = time.monotonic() + timeout_s

        def remaining() -> float:
            return max(0.1, deadline - time.monotonic())

        def root_answers() -> bool:
            self._check_alive()
            return httpx.get(self.base + "/", timeout=2, verify=self.verify()).status_code == 300

        session: Session | None = None
        try:
            wait_for("GET / to answer 300", root_answers, remaining())
            session = wait_for("an admin token", self.login, remaining())

            def all_available() -> bool:
                self._check_alive()
                assert session is not None
                return all(session.azs().get(az) for az in self.azs)

            wait_for("every AZ to show available", all_available, remaining())
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        finally:
            if session is not None:
                session.client.close()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"serve did not stop within {timeout_s}s of SIGTERM\n{self.logs()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, the way a crash or the OOM killer ends it."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)

    def restart(self, kill: bool = False) -> ServeProcess:
        if self.running:
            if kill:
                self.kill()
            else:
                self.stop()
        return self.start()

    # -- what serve tells its users --------------------------------------------

    def printed_clouds_yaml(self, run: int | None = None) -> dict[str, Any]:
        """The clouds.yaml snippet from serve's stdout, parsed."""
        out_path, _ = self.log_paths(run)
        text = out_path.read_text()
        assert "clouds.yaml:\n" in text, text
        snippet = text.split("clouds.yaml:\n", 1)[1].split("\n\n", 1)[0]
        return dict(yaml.safe_load(snippet))

    def written_clouds_yaml(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.clouds_yaml_path.read_text()))

    def client_env(self, config_file: Path | None = None) -> dict[str, str]:
        """Environment for an OpenStack client: OS_CLIENT_CONFIG_FILE + OS_CLOUD only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENEVS_", "OS_"))}
        env["OS_CLIENT_CONFIG_FILE"] = str(config_file or self.clouds_yaml_path)
        env["OS_CLOUD"] = "openevs"
        return env

    def login(self, user: str = "admin", password: str | None = None,
              project: str = "admin") -> Session:
        if password is None:
            password = self.admin_password or self.written_clouds_yaml()["clouds"]["openevs"][
                "auth"]["password"]
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": user, "domain": {"name": "Default"}, "password": password}
                    },
                },
                "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
            }
        }
        client = httpx.Client(timeout=30, verify=self.verify())
        r = client.post(f"{self.base}/v3/auth/tokens", json=body)
        if r.status_code != 201:
            client.close()
            raise AssertionError(f"login as {user} failed: {r.status_code} {r.text}")
        return Session(self.base, r.headers["X-Subject-Token"], r.json()["token"]["project"]["id"],
                       client)

    def admin_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`openevs admin ...` against this data dir and database."""
        result = subprocess.run(
            [sys.executable, "-m", "openevs.cli.main", "admin", *args],
            cwd=self.root, env=self.env(), capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"openevs admin {' '.join(args)}: {result.stderr}"
        return result

    # -- agents and pools -------------------------------------------------------

    def agent_pids(self) -> dict[str, int]:
        pids = {}
        for az in AZS:
            path = self.data_dir / "agents" / f"{az}.pid"
            with contextlib.suppress(OSError, ValueError):
                pids[az] = int(path.read_text().strip())
        return pids

    def pool_files(self) -> dict[str, set[str]]:
        """Every file in each AZ's pool directory (hidden ones included)."""
        return {
            az: {p.name for p in self.pool_dir(az).iterdir()} if self.pool_dir(az).is_dir() else set()
            for az in AZS
        }

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(AssertionError):
                self.stop()


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Make ServeProcess objects (not started); every one is stopped at teardown."""
    made: list[ServeProcess] = []

    def make(name: str = "serve", **kw: Any) -> ServeProcess:
        sp = ServeProcess(tmp_path / name, **kw)
        made.append(sp)
        return sp

    yield make
    for sp in made:
        sp.close()


@pytest.fixture(scope="module")
def shared_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One running serve on SQLite for every test of a module that only adds resources."""
    sp = ServeProcess(tmp_path_factory.mktemp("serve"))
    sp.start()
    yield sp
    sp.close()


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (serve migrates it itself)."""
    name = f"openevs_e2e_{uuid.uuid4().hex[:10]}"
    try:
        url = _pg_database(name)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required for this test: {exc}")
    yield url
    _drop_pg_database(name)
