"""A running controller for API tests: the real app served by uvicorn on a
loopback port, the reconciler thread, and real agent processes (one per AZ,
shared by the session) over unix sockets.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from openevs.agent.supervisor import AgentSupervisor
from openevs.api.app import create_app
from openevs.config import Settings, load_settings
from openevs.db.session import Database
from openevs.reconciler.loop import Reconciler
from openevs.runtime import Runtime
from openevs.security.sealing import Sealer
from openevs.services import identity
from tests.conftest import free_port

ADMIN_PASSWORD = "admin-secret-1"


@pytest.fixture(scope="session")
def agent_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agents")


@pytest.fixture(scope="session")
def supervisor(agent_data_dir: Path) -> Iterator[AgentSupervisor]:
    settings = load_settings(env={}, data_dir=str(agent_data_dir), nbd_port_base=0)
    sup = AgentSupervisor(settings)
    sup.start()
    sup.wait_ready(timeout_s=30)
    yield sup
    sup.stop()


@dataclass
class Api:
    """An HTTP client bound to a running controller, with a token of one project."""

    base: str
    client: httpx.Client
    runtime: Runtime
    token: str = ""
    project_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def login(self, user: str, password: str, project: str) -> Api:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}},
                },
                "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
            }
        }
        r = self.client.post(f"{self.base}/v3/auth/tokens", json=body)
        assert r.status_code == 201, r.text
        other = Api(self.base, self.client, self.runtime)
        other.token = r.headers["X-Subject-Token"]
        other.project_id = r.json()["token"]["project"]["id"]
        other.headers = {"X-Auth-Token": other.token}
        return other

    def url(self, path: str) -> str:
        return f"{self.base}{path.replace('{p}', self.project_id)}"

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(self.url(path), headers=self.headers, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.client.post(self.url(path), json=json, headers=self.headers, **kw)

    def put(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.client.put(self.url(path), json=json, headers=self.headers, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.delete(self.url(path), headers=self.headers, **kw)

    def wait(
        self, path: str, pred: Callable[[httpx.Response], bool], timeout_s: float = 20
    ) -> httpx.Response:
        deadline = time.monotonic() + timeout_s
        while True:
            r = self.get(path)
            if pred(r):
                return r
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on {path}: last {r.status_code} {r.text[:500]}")
            time.sleep(0.05)

    def create_volume(self, size: int = 1, az: str = "az1.dc1", **extra: Any) -> dict[str, Any]:
        r = self.post("/v2/{p}/volumes", {"volume": {"size": size, "availability_zone": az, **extra}})
        assert r.status_code == 202, r.text
        vid = r.json()["volume"]["id"]
        r = self.wait(f"/v2/{{p}}/volumes/{vid}", lambda r: r.json()["volume"]["status"] != "creating")
        return dict(r.json()["volume"])


def make_settings(data_dir: Path, db_url: str, supervisor: AgentSupervisor, **kw: Any) -> Settings:
    return load_settings(
        env={},
        data_dir=str(data_dir),
        database_url=db_url,
        admin_password=ADMIN_PASSWORD,
        listen=f"127.0.0.1:{free_port()}",
        nbd_port_base=0,
        health_interval_s=0.2,
        **kw,
    )


@pytest.fixture
def sealer() -> Sealer:
    """The deployment's sealing key of a test: every controller and runtime of it share it,
    as every controller host of a deployment shares its key file."""
    return Sealer.ephemeral()


@pytest.fixture
def controller_factory(
    database: Database, supervisor: AgentSupervisor, tmp_path: Path, sealer: Sealer
) -> Iterator[Callable[..., Api]]:
    started: list[tuple[uvicorn.Server, threading.Thread, Reconciler, Runtime]] = []

    def start(**overrides: Any) -> Api:
        settings = make_settings(tmp_path / "data", database.url, supervisor, **overrides)
        with database.session() as session:
            identity.bootstrap(session, ADMIN_PASSWORD)
        runtime = Runtime(
            settings,
            Database(database.url),
            {az: supervisor.client_for(az) for az in settings.azs},
            sealer=sealer,
        )
        reconciler = Reconciler(runtime)
        reconciler.run_once()
        reconciler.start()
        host, port = settings.listen_host_port
        server = uvicorn.Server(
            uvicorn.Config(create_app(runtime), host=host, port=port, log_level="warning", access_log=False)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "API server did not start"
            time.sleep(0.01)
        started.append((server, thread, reconciler, runtime))
        api = Api(f"http://{host}:{port}", httpx.Client(timeout=30), runtime)
        return api.login("admin", ADMIN_PASSWORD, "admin")

    yield start
    for server, thread, reconciler, runtime in started:
        server.should_exit = True
        thread.join(timeout=10)
        reconciler.stop()
        runtime.db.dispose()


@pytest.fixture
def api(controller_factory: Callable[..., Api]) -> Api:
    """A running controller and an admin token of project `admin`."""
    return controller_factory()


@pytest.fixture
def runtime(
    database: Database, supervisor: AgentSupervisor, tmp_path: Path, sealer: Sealer
) -> Iterator[Runtime]:
    """A controller's Runtime on the test database with the session's agents (no API, no reconciler)."""
    settings = make_settings(tmp_path / "data", database.url, supervisor)
    rt = Runtime(
        settings,
        Database(database.url),
        {az: supervisor.client_for(az) for az in settings.azs},
        sealer=sealer,
    )
    yield rt
    rt.db.dispose()


@pytest.fixture
def project_id(runtime: Runtime) -> str:
    with runtime.db.session() as session:
        return identity.create_project(session, f"p-{uuid.uuid4().hex[:8]}").id
