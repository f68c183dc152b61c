"""Racing clients: claims on one disk from many threads at once. Exactly one
claim wins, the others get a clean 4xx, and nothing answers 5xx.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from openevs.domain.errors import ChangedConcurrently
from openevs.services import volumes
from tests.integration.api.conftest import assert_client_error, create_server
from tests.integration.conftest import Api

WORKERS = 8


def race(api: Api, calls: list[Callable[[httpx.Client], httpx.Response]]) -> list[httpx.Response]:
    """Run the calls at once, each on a client of its own (its own connection)."""
    clients = [httpx.Client(timeout=30, headers=api.headers) for _ in calls]
    try:
        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(lambda pair: pair[0](pair[1]), zip(calls, clients, strict=True)))
    finally:
        for client in clients:
            client.close()


def statuses(responses: list[httpx.Response]) -> list[int]:
    for r in responses:
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            assert_client_error(r)
    return sorted(r.status_code for r in responses)


def test_one_disk_many_claims(api: Api) -> None:
    vol = api.create_volume(size=1)
    servers = [create_server(api, f"s{i}") for i in range(WORKERS)]

    def attach_to(server: dict[str, Any]) -> Callable[[httpx.Client], httpx.Response]:
        url = api.url(f"/v2.1/{{p}}/servers/{server['id']}/os-volume_attachments")
        return lambda c: c.post(url, json={"volumeAttachment": {"volumeId": vol["id"]}})

    codes = statuses(race(api, [attach_to(s) for s in servers]))
    assert codes.count(200) == 1, codes
    assert set(codes) <= {200, 409}, codes
    shown = api.get(f"/v2/{{p}}/volumes/{vol['id']}").json()["volume"]
    assert shown["status"] == "in-use" and len(shown["attachments"]) == 1

    # Many detaches of the one attachment: one wins, the others find nothing to detach.
    owner = shown["attachments"][0]["server_id"]
    detach_url = api.url(f"/v2.1/{{p}}/servers/{owner}/os-volume_attachments/{vol['id']}")
    codes = statuses(race(api, [lambda c: c.delete(detach_url)] * WORKERS))
    assert codes.count(202) == 1 and set(codes) <= {202, 404}, codes
    assert api.get(f"/v2/{{p}}/volumes/{vol['id']}").json()["volume"]["status"] == "available"

    # Extends and deletes racing each other: at most one extend, and a delete
    # that wins leaves the disk deleting; never a 5xx.
    action = api.url(f"/v2/{{p}}/volumes/{vol['id']}/action")
    vol_url = api.url(f"/v2/{{p}}/volumes/{vol['id']}")
    calls: list[Callable[[httpx.Client], httpx.Response]] = []
    for i in range(WORKERS):
        calls.append(lambda c, n=i: c.post(action, json={"os-extend": {"new_size": 2 + n}}))
    codes = statuses(race(api, calls))
    # Losers: 400 (the size they asked for is no longer larger) or 409 (they lost the
    # compare-and-set to the winner: every lost race answers 409).
    assert 202 in codes and set(codes) <= {202, 400, 409}, codes
    # Each winner saw the size it grew from; none may "grow" the disk to less than it has.
    r = api.wait(f"/v2/{{p}}/volumes/{vol['id']}", lambda r: r.json()["volume"]["status"] != "extending")
    grown = r.json()["volume"]
    assert grown["status"] == "available", grown
    assert 2 <= grown["size"] <= 1 + WORKERS
    sizes = {v.volume_id: v.size_bytes for v in api.runtime.agent("az1.dc1").list_volumes()}
    assert sizes[vol["id"]] == grown["size"] << 30
    codes = statuses(race(api, [lambda c: c.delete(vol_url)] * WORKERS))
    assert 202 in codes, codes
    api.wait(f"/v2/{{p}}/volumes/{vol['id']}", lambda r: r.status_code == 404)


def test_multiattach_disk_many_servers_at_once(api: Api) -> None:
    vol = api.create_volume(size=1, multiattach=True)
    servers = [create_server(api, f"s{i}") for i in range(WORKERS)]
    calls = [
        (lambda c, sid=s["id"]: c.post(api.url(f"/v2.1/{{p}}/servers/{sid}/os-volume_attachments"),
                                       json={"volumeAttachment": {"volumeId": vol["id"]}}))
        for s in servers
    ]
    codes = statuses(race(api, calls))
    shown = api.get(f"/v2/{{p}}/volumes/{vol['id']}").json()["volume"]
    # Losers of a compare-and-set may be told to retry (409), but every 200 is a real attachment.
    assert len(shown["attachments"]) == codes.count(200) >= 1, (codes, shown["attachments"])
    assert shown["status"] == "in-use"
    # Deleting all servers at once releases the disk.
    codes = statuses(race(api, [
        (lambda c, sid=s["id"]: c.delete(api.url(f"/v2.1/{{p}}/servers/{sid}"))) for s in servers]))
    assert codes == [204] * WORKERS, codes
    shown = api.get(f"/v2/{{p}}/volumes/{vol['id']}").json()["volume"]
    assert shown["status"] == "available" and shown["attachments"] == []


def test_an_extend_decided_on_a_stale_size_is_refused(api: Api) -> None:
    """The ABA case behind racing extends, made deterministic: a request that
    read the disk at 1 GB must not move it to extending (to 2 GB) after
    another request grew it to 3 GB and it became available again."""
    vol = api.create_volume(size=1)
    with api.runtime.db.session() as stale:
        cached = volumes.get_volume(stale, api.project_id, vol["id"])  # the session keeps it at 1 GB
        assert cached.size_gb == 1
        r = api.post(f"/v2/{{p}}/volumes/{vol['id']}/action", {"os-extend": {"new_size": 3}})
        assert r.status_code == 202, r.text
        api.wait(f"/v2/{{p}}/volumes/{vol['id']}", lambda r: r.json()["volume"]["status"] == "available")
        with pytest.raises(ChangedConcurrently):
            volumes.begin_extend(stale, api.runtime.settings, api.project_id, vol["id"], 2)
        stale.rollback()
    shown = api.get(f"/v2/{{p}}/volumes/{vol['id']}").json()["volume"]
    assert (shown["status"], shown["size"]) == ("available", 3)


def test_concurrent_creates_respect_the_quota(controller_factory: Callable[..., Api]) -> None:
    api = controller_factory(quota_volumes=2, quota_gigabytes=100)
    url = api.url("/v2/{p}/volumes")
    body = {"volume": {"size": 1, "availability_zone": "az1.dc1"}}
    codes = statuses(race(api, [lambda c: c.post(url, json=body)] * WORKERS))
    assert codes == [202, 202] + [413] * (WORKERS - 2), codes
    assert len(api.get("/v2/{p}/volumes").json()["volumes"]) == 2
