"""`/metrics` end to end: the real `openevs serve`, a standalone DR agent, a real pair.

Every figure is scraped over HTTP from the URLs serve printed and wrote to
endpoints.json, parsed with prometheus_client's parser, and checked against
what the API reports (status, replication_status, fault_level, progress)
and what the test itself wrote over NBD. Then the DR agent dies and the
figures follow: agent down, fault level 5, dirty bytes and lag above 0.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.agents import StandaloneAgent, serve_with_standalone_agent
from tests.e2e.conftest import ServeProcess, Session
from tests.e2e.test_replication import MIB, nbd_address, write_blocks
from tests.support.api import get_json, make_disk, wait_json
from tests.support.metrics import Exposition, deployed_exprs, endpoints, metric_names, scrape
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

PROD_AZ, DR_AZ = "az1.dc1", "az3.dc3"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ServeProcess, StandaloneAgent, Session]]:
    with serve_with_standalone_agent(tmp_path, DR_AZ, {"OPENEVS_METRICS_VOLUMES": "all",
                                                       "OPENEVS_LOG_FORMAT": "json"}) as (serve, agent):
        yield serve, agent, serve.login()


def create_pair(session: Session, prod: str, dr: str) -> str:
    body = {"replication": {"name": "metrics", "volume_ids": [prod, dr], "priority_station": PROD_AZ,
                            "replication_model": "hypermetro"}}  # fmt: skip
    r = session.post("/v2/{p}/os-vendor-replications", body)
    assert r.status_code == 202, r.text
    return str(r.json()["replication"]["id"])


def pair_matches_api(m: Exposition, pair: dict[str, Any]) -> None:
    """The pair's series say what the API says."""
    labels = {"pair_id": pair["id"]}
    assert m.value("openevs_pair_replication_status", replication_status=pair["replication_status"],
                   **labels) == 1  # fmt: skip
    assert m.sum("openevs_pair_replication_status", **labels) == 1  # one-hot
    assert m.value("openevs_pair_status", status=pair["status"], **labels) == 1
    assert m.value("openevs_pair_fault_level", **labels) == float(pair["fault_level"])
    if pair["progress"] is not None:
        assert m.value("openevs_pair_progress_ratio", **labels) == int(pair["progress"]) / 100


def test_metrics_of_controller_and_agents_follow_a_real_pair(
    stack: tuple[ServeProcess, StandaloneAgent, Session],
) -> None:
    serve, agent, session = stack
    listed = endpoints(serve.data_dir)
    assert listed["api"] == serve.base
    metrics = listed["metrics"]
    assert isinstance(metrics, dict)
    controller, agents = metrics["controller"], metrics["agents"]
    assert agents[DR_AZ] == f"{agent.url}/metrics"  # a standalone agent: its own control API
    assert agents[PROD_AZ] == controller.replace("/metrics", f"/agents/{PROD_AZ}/metrics")
    printed = serve.log_paths()[0].read_text()
    for url in [controller, *agents.values()]:
        assert url in printed, f"{url} not printed at start:\n{printed}"
    # Not on the public API: a project user never sees another project's names there.
    assert httpx.get(serve.base + "/metrics").status_code == 404

    prod, dr = make_disk(session, PROD_AZ), make_disk(session, DR_AZ)
    prod_addr = nbd_address(session, prod, PROD_AZ)
    asyncio.run(write_blocks(prod_addr, range(0, 10)))  # before pairing: the sync copies these
    pair_id = create_pair(session, prod, dr)
    path = f"/v2/{{p}}/os-vendor-replications/{pair_id}"
    pair = wait_json(session, path, "replication", lambda p: p["replication_status"] == "active")
    asyncio.run(write_blocks(prod_addr, range(10, 30)))  # while active: forwarded

    m = scrape(controller)
    pair_matches_api(m, pair)
    labels = {"pair_id": pair_id}
    assert m.value("openevs_pair_info", name="metrics", production_volume_id=prod, dr_volume_id=dr,
                   production_az=PROD_AZ, dr_az=DR_AZ) == 1  # fmt: skip
    assert m.value("openevs_pair_dirty_bytes", **labels) == 0
    assert m.value("openevs_pair_lag_seconds", **labels) == 0
    assert m.value("openevs_pair_link_up", **labels) == 1
    assert m.value("openevs_agent_up", az=DR_AZ) == 1
    # HTTP by route template: the pair was created through this one, ids never in labels.
    created = m.value("openevs_http_requests_total", method="POST",
                      route="/v2/{project_id}/os-vendor-replications", status="202")  # fmt: skip
    assert created == 1
    routes = {dict(lb)["route"] for lb in m.all("openevs_http_requests_total")}
    assert not [r for r in routes if pair_id in r or prod in r], routes
    assert m.value("openevs_reconciler_pass_duration_seconds_count") > 0
    assert m.value("openevs_reconciler_backlog", kind="pair") == 0

    # The production agent (embedded: through the controller's listener).
    a = scrape(agents[PROD_AZ])
    writes = a.value("openevs_nbd_requests_total", op="write")
    assert writes >= 30 and a.value("openevs_nbd_request_bytes_total", op="write") >= 30 * MIB
    assert a.value("openevs_nbd_request_duration_seconds_count", op="write") == writes
    assert a.value("openevs_nbd_volume_requests_total", volume_id=prod, op="write") == 30
    assert a.value("openevs_replication_forwarded_bytes_total") == 20 * MIB
    assert a.value("openevs_replication_resync_bytes_total") >= 10 * MIB
    assert a.value("openevs_replication_link_request_duration_seconds_count", op="write") >= 20
    assert a.value("openevs_pool_allocated_bytes", az=PROD_AZ) >= 30 * MIB
    assert a.value("openevs_replica_dirty_bytes", volume_id=prod, role="primary") == 0
    assert a.value("openevs_nbd_connections") >= 0
    # The DR agent: what reached it over the link (the link protocol, not NBD).
    d = scrape(agents[DR_AZ])
    assert d.value("openevs_replication_link_served_requests_total", op="write") >= 20
    assert d.value("openevs_replication_link_served_request_bytes_total", op="write") >= 20 * MIB
    assert d.value("openevs_replica_link_up", volume_id=dr, role="secondary") == 1
    # Every series the dashboard and the alert rules read is in what we expose.
    exposed = m.names() | a.names() | d.names()
    missing = {n for expr in deployed_exprs() for n in metric_names(expr)} - exposed
    assert not missing, f"deploy/ reads series nothing exposes: {sorted(missing)}"

    # Cut the link: the DR agent dies; production keeps writing.
    agent.kill()
    asyncio.run(write_blocks(prod_addr, range(30, 35)))
    pair = wait_json(session, path, "replication", lambda p: p["fault_level"] == "5")

    def follows() -> bool:
        m = scrape(controller)
        now = get_json(session, path, "replication")
        if now["replication_status"] == "active" or m.value("openevs_agent_up", az=DR_AZ) != 0:
            return False
        pair_matches_api(m, now)
        return m.value("openevs_pair_dirty_bytes", **labels) >= 5 * MIB

    wait_for("the metrics to show the cut link", follows, 30)
    m = scrape(controller)
    assert m.value("openevs_pair_link_up", **labels) == 0
    assert m.value("openevs_pair_lag_seconds", **labels) > 0
    assert httpx.get(agents[PROD_AZ]).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(agents[DR_AZ], timeout=5)
    logs_are_json(serve)


def logs_are_json(serve: ServeProcess) -> None:
    """OPENEVS_LOG_FORMAT=json: serve's and its agents' own lines are JSON, naming their resources."""
    texts = [serve.log_paths()[1].read_text(), (serve.data_dir / "agents" / f"{PROD_AZ}.log").read_text()]
    for text in texts:
        ours = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert ours and all(set(line) >= {"ts", "level", "logger", "message"} for line in ours), text[-2000:]
        plain = [line for line in text.splitlines() if re.match(r"^\d{4}-\d\d-\d\d .* openevs\.", line)]
        assert not plain, plain
    assert any("ids" in json.loads(line) for line in texts[0].splitlines() if line.startswith("{"))
