"""The operators' extensions on a live controller with real agents: verify of a pair
and of a group, refused while one runs; a pair's resync limit, refused when out of
range and delivered to the production agent's persisted config."""

from __future__ import annotations

from typing import Any

from openevs.agent.mirror.config import load_configs
from openevs.agent.supervisor import AgentSupervisor
from tests.integration.conftest import Api
from tests.integration.replication.test_group_api import GROUPS, PAIRS, fault, group_body, make_pairs, show


def pair(api: Api, pid: str) -> dict[str, Any]:
    r = api.get(f"{PAIRS}/{pid}")
    assert r.status_code == 200, r.text
    return dict(r.json()["replication"])


def finished(api: Api, pid: str) -> dict[str, Any]:
    def done(r: Any) -> bool:
        return bool((r.json()["replication"]["verify"] or {}).get("status") == "finished")

    api.wait(f"{PAIRS}/{pid}", done, 60)
    return dict(pair(api, pid)["verify"])


def test_a_group_verify_checks_every_member_and_a_second_one_waits(api: Api) -> None:
    ids = make_pairs(api, 2)
    assert pair(api, ids[0])["verify"] is None
    r = api.post(GROUPS, group_body(ids))
    assert r.status_code == 202, r.text
    gid = r.json()["replication_consistency_group"]["id"]
    show_path = f"{GROUPS}/{gid}"
    api.wait(show_path, lambda r: r.json()["replication_consistency_group"]["status"] == "available", 30)
    r = api.post(f"{GROUPS}/{gid}/verify")
    assert r.status_code == 202, r.text
    assert sorted(r.json()["replication_consistency_group"]["replication_ids"]) == sorted(ids)
    again = api.post(f"{PAIRS}/{ids[0]}/verify")
    if again.status_code != 202:  # still running: refused, never a second run beside it
        assert "being verified" in fault(again)["message"]
    for pid in ids:
        run = finished(api, pid)
        assert run["mismatched_bytes"] == 0 and run["checked_bytes"] + run["skipped_bytes"] == 1 << 30
    shown = show(api, gid)
    assert shown["status"] == "available"
    # the members' resync rolled up: both in sync, nothing left; the slowest member's ETA
    members = [pair(api, pid) for pid in ids]
    assert shown["dirty_bytes"] == sum(m["dirty_bytes"] for m in members) == 0
    etas = [m["resync_eta_s"] for m in members if m["resync_eta_s"] is not None]
    assert shown["resync_eta_s"] == (max(etas) if etas else None)
    assert api.post(f"{GROUPS}/unknown-group/verify").status_code == 404


def test_a_pairs_resync_limit_reaches_its_production_agent(api: Api, supervisor: AgentSupervisor) -> None:
    (pid,) = make_pairs(api, 1)
    r = api.put(f"{PAIRS}/{pid}/resync-rate", json={"resync_rate_bytes_per_s": 32 << 20})
    assert r.status_code == 200, r.text
    view = r.json()["replication"]
    assert view["resync_rate_limit_bytes_per_s"] == 32 << 20
    assert {"dirty_bytes", "resync_rate_bytes_per_s", "resync_eta_s"} <= set(view)
    prod = view["volume_ids"].split(",")[0]
    saved = load_configs(supervisor.settings.pool_dir("az1.dc1"))[prod]  # what the agent persisted
    assert saved.pair_id == pid and saved.resync_rate_bytes_per_s == 32 << 20
    for bad in ({"resync_rate_bytes_per_s": -1}, {"resync_rate_bytes_per_s": "fast"}, {}):
        assert 400 <= api.put(f"{PAIRS}/{pid}/resync-rate", json=bad).status_code < 500
    assert api.put(f"{PAIRS}/nope/resync-rate", json={"resync_rate_bytes_per_s": 1}).status_code == 404
