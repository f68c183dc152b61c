"""deploy/: the Prometheus config and alert rules pass `promtool`, and the Grafana
dashboard is a well-formed dashboard (one row per concern, every panel placed
without overlap, every target a PromQL expression of ours).

That every metric the dashboard and the rules read is in the real exposition
is checked against a running serve in tests/e2e/test_metrics.py."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.support.metrics import DEPLOY, deployed_exprs, metric_names, need_binary

PROMETHEUS = DEPLOY / "prometheus"


def promtool(*args: str) -> str:
    done = subprocess.run(
        [need_binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_alert_rules_pass_promtool_check() -> None:
    out = promtool("check", "rules", "rules/openevs.rules.yml")
    assert "SUCCESS: 7 rules found" in out, out


def test_alert_rules_pass_their_unit_tests() -> None:
    out = promtool("test", "rules", "tests/openevs.rules.test.yml")
    assert "SUCCESS" in out, out


def test_scrape_config_passes_promtool_check() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "is valid prometheus config file syntax" in out, out


def _dashboard() -> dict[str, Any]:
    return dict(json.loads((DEPLOY / "grafana" / "openevs.json").read_text()))


def test_dashboard_is_a_grafana_dashboard_with_a_row_per_concern() -> None:
    dash = _dashboard()
    assert dash["uid"] == "openevs" and dash["title"] == "openevs"
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["templating"]["list"][0] == {**dash["templating"]["list"][0], "type": "datasource",
                                             "query": "prometheus"}  # fmt: skip
    panels = dash["panels"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Fleet health", "Replication", "Data path", "Controller"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert set(g) == {"h", "w", "x", "y"} and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "bargauge", "table"}, p["type"]
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], p["title"]
        for ref, target in zip("ABCDEFGH", p["targets"], strict=False):
            assert target["refId"] == ref, target
            assert metric_names(target["expr"]) or "up{" in target["expr"], target  # up: Prometheus' own


def test_every_deployed_expression_reads_openevs_series() -> None:
    exprs = deployed_exprs()
    assert len(exprs) > 30
    assert all(metric_names(e) for e in exprs if "up{" not in e), [e for e in exprs if not metric_names(e)]
