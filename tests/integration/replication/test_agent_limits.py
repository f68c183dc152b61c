"""The per-agent limits (settings agent_max_volumes, agent_max_pairs): a create past
the limit is refused with a 413 that names the limit, nothing of it is made,
and the pairs already running are untouched."""

from __future__ import annotations

from typing import Any

from tests.integration.replication.test_group_api import PAIRS, fault, make_pairs

VOLUMES = "/v2/{p}/volumes"


def volume_ids(api: Any) -> set[str]:
    return {v["id"] for v in api.get(VOLUMES).json()["volumes"]}


def test_a_disk_past_the_agent_limit_is_refused_and_nothing_is_made(controller_factory: Any) -> None:
    api = controller_factory(agent_max_volumes=2)
    api.create_volume(az="az1.dc1")
    api.create_volume(az="az1.dc1")
    before = volume_ids(api)
    r = api.post(VOLUMES, {"volume": {"size": 1, "availability_zone": "az1.dc1"}})
    assert r.status_code == 413, r.text
    message = fault(r)["message"]
    assert "agent_max_volumes = 2" in message and "az1.dc1" in message, message
    assert volume_ids(api) == before
    api.create_volume(az="az2.dc2")  # another agent has room


def test_a_pair_past_the_agent_limit_is_refused_and_the_running_pair_is_untouched(
    controller_factory: Any,
) -> None:
    api = controller_factory(agent_max_pairs=1)
    (running,) = make_pairs(api, 1)
    prod, dr = api.create_volume(az="az1.dc1")["id"], api.create_volume(az="az3.dc3")["id"]
    body = {"replication": {"volume_ids": [prod, dr], "priority_station": "az1.dc1",
                            "replication_model": "hypermetro"}}  # fmt: skip
    r = api.post(PAIRS, body)
    assert r.status_code == 413, r.text
    message = fault(r)["message"]
    assert "agent_max_pairs = 1" in message and "az1.dc1" in message, message
    pairs = api.get(PAIRS).json()["replications"]
    assert [p["id"] for p in pairs] == [running]
    assert pairs[0]["status"] == "available", pairs[0]
    for vid in (prod, dr):  # the disks were not claimed: still free to pair elsewhere
        assert api.get(f"{VOLUMES}/{vid}").json()["volume"]["status"] == "available"
