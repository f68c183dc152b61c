"""A real Prometheus (Debian's `prometheus`) scraping a real `openevs serve` with a pair.

Prometheus finds its targets in the file_sd file serve wrote
(`<data_dir>/prometheus-targets.json`), loads the alert rules of
deploy/prometheus/, scrapes every second, and the test asks its HTTP query
API what it saw: the pair active with no lag; then the DR agent dies and
Prometheus sees the pair's fault level and dirty bytes change, the agent's
target go down and the fault alert become pending (its `for:` runs in
minutes; the firing itself is tested by `promtool test rules`).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.e2e.agents import StandaloneAgent, serve_with_standalone_agent
from tests.e2e.conftest import ServeProcess, Session
from tests.e2e.test_metrics import create_pair
from tests.e2e.test_replication import nbd_address, write_blocks
from tests.support.api import make_disk, wait_json
from tests.support.metrics import need_binary
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

PROD_AZ, DR_AZ = "az1.dc1", "az3.dc3"
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules" / "openevs.rules.yml"


class Prometheus:
    def __init__(self, root: Path, targets_file: Path) -> None:
        self.binary = need_binary("prometheus")
        self.root = root
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "openevs",
                 "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}]},
            ],
        }  # fmt: skip
        self.config = root / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.root / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                return httpx.get(self.base + "/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for("prometheus to be ready", ready, 60)

    def log(self) -> str:
        path = self.root / "prometheus.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        r = httpx.get(self.base + "/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert body["status"] == "success", body
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    def wait_value(self, expr: str, pred: Any, what: str, timeout_s: float = 60) -> float:
        seen: list[Any] = []

        def check() -> bool:
            result = self.query(expr)
            seen[:] = result
            return len(result) == 1 and bool(pred(result[0][1]))

        try:
            wait_for(what, check, timeout_s)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {expr} last gave {seen}") from None
        return seen[0][1]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ServeProcess, StandaloneAgent, Session, Prometheus]]:
    with serve_with_standalone_agent(tmp_path, DR_AZ) as (serve, agent):
        prometheus = Prometheus(tmp_path, serve.data_dir / "prometheus-targets.json")
        try:
            prometheus.start()
            yield serve, agent, serve.login(), prometheus
        finally:
            prometheus.stop()


def test_prometheus_scrapes_serve_and_sees_a_cut_link(
    stack: tuple[ServeProcess, StandaloneAgent, Session, Prometheus],
) -> None:
    serve, agent, session, prom = stack
    prod, dr = make_disk(session, PROD_AZ), make_disk(session, DR_AZ)
    prod_addr = nbd_address(session, prod, PROD_AZ)
    pair_id = create_pair(session, prod, dr)
    path = f"/v2/{{p}}/os-vendor-replications/{pair_id}"
    wait_json(session, path, "replication", lambda p: p["replication_status"] == "active")
    asyncio.run(write_blocks(prod_addr, range(0, 5)))

    # Every target serve listed is up: the controller and the three agents.
    prom.wait_value('count(up{job="openevs"} == 1)', lambda v: v == 4, "every target to be up")
    sel = f'{{pair_id="{pair_id}"}}'
    prom.wait_value(f'openevs_pair_replication_status{{pair_id="{pair_id}",replication_status="active"}}',
                    lambda v: v == 1, "prometheus to see the pair active")  # fmt: skip
    assert prom.wait_value(f"openevs_pair_lag_seconds{sel}", lambda v: True, "the lag") == 0
    assert prom.wait_value(f"openevs_pair_fault_level{sel}", lambda v: True, "the fault level") == 0
    writes = f'openevs_nbd_requests_total{{az="{PROD_AZ}",op="write"}}'
    assert prom.wait_value(writes, lambda v: v >= 5, "the agent's NBD writes") >= 5

    # Cut the link: the DR agent dies, production keeps writing.
    agent.kill()
    asyncio.run(write_blocks(prod_addr, range(5, 10)))
    prom.wait_value(f"openevs_pair_fault_level{sel}", lambda v: v == 5, "fault level 5")
    prom.wait_value(f'openevs_pair_replication_status{{pair_id="{pair_id}",replication_status="active"}}',
                    lambda v: v == 0, "the pair no longer active")  # fmt: skip
    prom.wait_value(f"openevs_pair_dirty_bytes{sel}", lambda v: v >= 5 << 20, "the dirty bytes")
    prom.wait_value(f"openevs_pair_lag_seconds{sel}", lambda v: v > 0, "the lag")
    prom.wait_value(f'up{{job="openevs",az="{DR_AZ}"}}', lambda v: v == 0, "the DR agent's target down")
    prom.wait_value(f'ALERTS{{alertname="OpenevsPairFault",pair_id="{pair_id}"}}', lambda v: v == 1,
                    "the fault alert to be pending")  # fmt: skip
