"""The controller answers, creates a disk in a real pool, and deletes it."""

from __future__ import annotations

from tests.integration.conftest import Api


def test_volume_lifecycle(api: Api) -> None:
    vol = api.create_volume(size=2, name="smoke")
    assert vol["status"] == "available"
    pool = api.runtime.settings  # pool of the session's agents, not this data dir
    assert pool is not None
    infos = {v.volume_id: v for v in api.runtime.agent("az1.dc1").list_volumes()}
    assert infos[vol["id"]].size_bytes == 2 << 30
    r = api.delete(f"/v2/{{p}}/volumes/{vol['id']}")
    assert r.status_code == 202
    api.wait(f"/v2/{{p}}/volumes/{vol['id']}", lambda r: r.status_code == 404)
    assert vol["id"] not in {v.volume_id for v in api.runtime.agent("az1.dc1").list_volumes()}
