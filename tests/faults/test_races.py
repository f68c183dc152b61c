"""Races: 50 concurrent requests on the same resources of a live controller.

A live controller with real agents (the integration `api` fixture, on SQLite
and PostgreSQL); 50 threads start together at a barrier. The promises:
exactly the allowed requests win, every refusal is a 4xx fault body, no 5xx,
no orphan claim, and after racing group actions the agents' roles agree with
the database.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from openevs.db.models import ReplicationClaim, ReplicationPair, Volume
from openevs.domain.volumes import GIB
from tests.integration.api.conftest import assert_client_error
from tests.integration.conftest import Api
from tests.integration.replication.test_group_api import (
    EXTEND,
    FAILOVER,
    GROUPS,
    REPROTECT,
    REVERSE,
    STOP,
    SYNC,
    group_body,
    make_group,
    make_pairs,
)

pytestmark = pytest.mark.faults

THREADS = 50
PAIRS = "/v2/{p}/os-vendor-replications"
TERMINAL_GROUP = {"available", "error", "failovered", "error_reversing", "error_failovering",
                  "error_deleting"}  # fmt: skip


def race(requests: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the requests in threads released together; their responses, in order."""
    barrier = threading.Barrier(len(requests))
    out: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = requests[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below with the request's index
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = [r for r in out if not isinstance(r, httpx.Response)]
    assert not errors, errors[:5]
    return out


def check_answers(responses: list[httpx.Response], success: set[int]) -> None:
    """Every answer is a success or a 4xx with a fault body; never a 5xx."""
    for r in responses:
        assert r.status_code < 500, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
        if r.status_code not in success:
            assert_client_error(r)


def check_claims(api: Api) -> None:
    """No orphan claim: every claim belongs to a pair, every pair holds exactly its two disks."""
    with api.runtime.db.session() as session:
        claims = {c.volume_id: c.pair_id for c in session.scalars(select(ReplicationClaim))}
        pairs = {p.id: {p.production_volume_id, p.dr_volume_id}
                 for p in session.scalars(select(ReplicationPair))}  # fmt: skip
    for vid, pid in claims.items():
        assert pid in pairs and vid in pairs[pid], f"orphan claim {vid} -> {pid}"
    for pid, vids in pairs.items():
        assert {v for v, p in claims.items() if p == pid} == vids, f"pair {pid} claims != {vids}"


def test_concurrent_pair_creates_over_overlapping_disks(api: Api) -> None:
    started = time.monotonic()
    az1 = [api.create_volume(az="az1.dc1")["id"] for _ in range(3)]
    az2 = [api.create_volume(az="az2.dc2")["id"] for _ in range(3)]
    rng = random.Random(6)
    couples = [[rng.choice(az1), rng.choice(az2)] for _ in range(THREADS)]
    body = {"priority_station": "az1.dc1", "replication_model": "hypermetro"}

    def create(couple: list[str]) -> Callable[[], httpx.Response]:
        return lambda: api.post(PAIRS, {"replication": {**body, "volume_ids": couple}})

    responses = race([create(c) for c in couples])
    check_answers(responses, {202})
    assert {r.status_code for r in responses} <= {202, 400, 409}, [r.status_code for r in responses]
    winners = [c for c, r in zip(couples, responses, strict=True) if r.status_code == 202]
    claimed = [v for c in winners for v in c]
    assert len(claimed) == len(set(claimed)), f"a disk won twice: {winners}"
    for couple, r in zip(couples, responses, strict=True):
        if r.status_code != 202:  # lost only to a winner holding one of its disks
            assert set(couple) & set(claimed), f"{couple} lost to nobody: {r.status_code} {r.text}"
    listed = api.get(PAIRS).json()["replications"]
    assert sorted(p["volume_ids"] for p in listed) == sorted(",".join(c) for c in winners)
    check_claims(api)
    for p in listed:
        api.wait(f"{PAIRS}/{p['id']}", lambda r: r.json()["replication"]["status"] == "available", 30)
    check_claims(api)
    print(f"\npair creates: {len(winners)} of {THREADS} won; {time.monotonic() - started:.1f} s")


def check_roles(api: Api, pair_ids: list[str], failovered: bool) -> None:
    """The agents hold the roles of the database: production primary (writable),
    DR secondary, both at the pair's epoch. After a failover the old primary
    may still be a fenced primary of an older epoch (demoted at reprotect)."""
    def disagreement() -> str | None:
        with api.runtime.db.session() as session:
            pairs = [session.get(ReplicationPair, pid) for pid in pair_ids]
            azs = {v.id: v.availability_zone for v in session.scalars(select(Volume))}
            rows = [(p.production_volume_id, p.dr_volume_id, p.epoch) for p in pairs if p is not None]
        for prod_id, dr_id, epoch in rows:
            prod = api.runtime.agent(azs[prod_id]).get_replication(prod_id)
            dr = api.runtime.agent(azs[dr_id]).get_replication(dr_id)
            if (prod.role, prod.fenced, prod.epoch) != ("primary", False, epoch):
                return f"production {prod_id} at epoch {epoch}: {prod}"
            old_primary = failovered and dr.role == "primary" and dr.fenced and dr.epoch < epoch
            if (dr.role, dr.epoch) != ("secondary", epoch) and not old_primary:
                return f"DR {dr_id} at epoch {epoch}: {dr}"
        return None

    deadline = time.monotonic() + 30
    while (problem := disagreement()) is not None:
        assert time.monotonic() < deadline, f"agents disagree with the database: {problem}"
        time.sleep(0.1)


def check_sizes(api: Api) -> None:
    """Every disk's size in the database is its size on its agent (racing extends)."""
    with api.runtime.db.session() as session:
        volumes = [(v.id, v.availability_zone, v.size_gb) for v in session.scalars(select(Volume))]
    on_agents = {info.volume_id: info.size_bytes for az in {az for _, az, _ in volumes}
                 for info in api.runtime.agent(az).list_volumes()}  # fmt: skip
    for vid, _, size_gb in volumes:
        assert on_agents[vid] == size_gb * GIB, f"{vid}: {size_gb} GB in the database, {on_agents[vid]} B"


def test_concurrent_group_actions_on_one_group(api: Api) -> None:
    started = time.monotonic()
    pair_ids = make_pairs(api, 2)
    gid = make_group(api, pair_ids)
    path = f"{GROUPS}/{gid}"
    rng = random.Random(6)

    # First extends alone (mixed with the rest they mostly meet a group in `updating`).
    def extend(size_gb: int) -> Callable[[], httpx.Response]:
        return lambda: api.post(f"{path}/action", {EXTEND: {"replications": [
            {"id": pair_ids[0], "new_size": size_gb}]}})

    extends = race([extend(rng.randint(2, 5)) for _ in range(10)])
    check_answers(extends, {200})
    check_sizes(api)

    kinds: list[tuple[str, Callable[[], httpx.Response]]] = [
        ("pause", lambda: api.post(f"{path}/action", {STOP: None})),
        ("sync", lambda: api.post(f"{path}/action", {SYNC: None})),
        ("failover", lambda: api.post(f"{path}/action", {FAILOVER: None})),
        ("reverse", lambda: api.post(f"{path}/action", {REVERSE: None})),
        ("reprotect", lambda: api.post(f"{path}/action", {REPROTECT: None})),
        ("extend", lambda: api.post(f"{path}/action", {EXTEND: {"replications": [
            {"id": pair_ids[0], "new_size": rng.randint(6, 8)}]}})),
        ("rename", lambda: api.put(path, {"replication_consistency_group": {"name": "raced"}})),
        ("delete", lambda: api.delete(path)),
    ]
    chosen = [rng.choice(kinds) for _ in range(THREADS - len(kinds))] + kinds
    responses = race([fn for _, fn in chosen])
    check_answers(responses, {200, 202})
    tally: dict[str, list[int]] = {}
    for (name, _), r in zip(chosen, responses, strict=True):
        tally.setdefault(name, []).append(r.status_code)

    def settled(r: httpx.Response) -> bool:
        group = r.json()["replication_consistency_group"]
        return group["status"] in TERMINAL_GROUP and group["replication_status"] != "copying"

    r = api.wait(path, lambda r: r.status_code == 200 and settled(r), timeout_s=60)
    group = r.json()["replication_consistency_group"]
    assert sorted(group["replication_ids"]) == sorted(pair_ids)  # DELETE never wins with members
    check_roles(api, pair_ids, failovered=group["status"] == "failovered")
    check_claims(api)
    check_sizes(api)
    print(f"\ngroup actions: {dict(sorted((k, sorted(v)) for k, v in tally.items()))}; "
          f"ended {group['status']}/{group['replication_status']}; {time.monotonic() - started:.1f} s")


def test_concurrent_group_creates_claiming_the_same_pairs(api: Api) -> None:
    started = time.monotonic()
    pair_ids = make_pairs(api, 3)
    rng = random.Random(6)
    # Every request names the first pair, plus a random subset of the others, in random order.
    bodies = []
    for _ in range(THREADS):
        ids = [pair_ids[0], *(p for p in pair_ids[1:] if rng.random() < 0.5)]
        rng.shuffle(ids)
        bodies.append(group_body(ids))
    responses = race([lambda b=b: api.post(GROUPS, b) for b in bodies])
    check_answers(responses, {202})
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 1, codes
    assert set(codes) <= {202, 409}, codes
    winner = next(r for r in responses if r.status_code == 202).json()["replication_consistency_group"]
    listed = api.get(GROUPS).json()["replication_consistency_groups"]
    assert [g["id"] for g in listed] == [winner["id"]]
    for pid in pair_ids:
        member = api.get(f"{PAIRS}/{pid}").json()["replication"]["replication_consistency_group_id"]
        assert member == (winner["id"] if pid in winner["replication_ids"] else None), pid
    api.wait(f"{GROUPS}/{winner['id']}",
             lambda r: r.json()["replication_consistency_group"]["status"] == "available", 30)
    check_claims(api)
    print(f"\ngroup creates: 1 of {THREADS} won; {time.monotonic() - started:.1f} s")
