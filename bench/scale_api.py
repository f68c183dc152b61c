"""Controller list/detail routes at scale: p50 per route at N and 10 x N rows.

No agents: the rows are written straight into a migrated SQLite file (bulk
inserts, the shapes the services write: every pair's disks, every pair in a
group of one), and the requests go through the whole ASGI app in process
(middlewares, auth, the route, JSON) with a real token. For each N of
`--steps` (default 1,000 and 10,000 pairs, i.e. 2 N volumes and N groups)
the bench prints the p50 of `--calls` calls of each route with limit=1000,
then the ratio of the last step to the first, for the wall time and for the CPU time
(a loaded machine inflates the wall time; the CPU time much less) (the goal: flat, the page does
not cost more because the table holds more).

Run: nice -n 10 .venv/bin/python bench/scale_api.py [--steps 1000,10000] [--calls 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openevs.api.app import create_app  # noqa: E402
from openevs.config import load_settings  # noqa: E402
from openevs.db.models import (  # noqa: E402
    ReplicationClaim,
    ReplicationGroup,
    ReplicationPair,
    Volume,
    utcnow,
)
from openevs.db.session import Database, upgrade  # noqa: E402
from openevs.runtime import Runtime  # noqa: E402
from openevs.services import identity  # noqa: E402

AZ_A, AZ_B = "az1.dc1", "az2.dc2"
PASSWORD = "bench-admin-1"
CHUNK = 2000


def routes(sample: dict[str, str]) -> dict[str, str]:
    """Route label -> path; {p} is the project. `sample` names one row of each kind."""
    return {
        "volumes": "/v2/{p}/volumes?limit=1000",
        "volumes/detail": "/v2/{p}/volumes/detail?limit=1000",
        "volumes/detail marker": "/v2/{p}/volumes/detail?limit=1000&marker=" + sample["volume"],
        "volumes/detail status": "/v2/{p}/volumes/detail?limit=1000&status=available",
        "volume show": "/v2/{p}/volumes/" + sample["volume"],
        "pairs": "/v2/{p}/os-vendor-replications?limit=1000",
        "pairs marker": "/v2/{p}/os-vendor-replications?limit=1000&marker=" + sample["pair"],
        "pairs sort name": "/v2/{p}/os-vendor-replications?limit=1000&sort_key=name&sort_dir=asc",
        "pairs volume_id": "/v2/{p}/os-vendor-replications?volume_id=" + sample["volume"],
        "pair show": "/v2/{p}/os-vendor-replications/" + sample["pair"],
        "groups": "/v2/{p}/os-vendor-replication-consistency-groups?limit=1000",
        "groups marker": "/v2/{p}/os-vendor-replication-consistency-groups?limit=1000&marker="
        + sample["group"],
        "group show": "/v2/{p}/os-vendor-replication-consistency-groups/" + sample["group"],
    }


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]


def seed(db: Database, project_id: str, start: int, count: int) -> dict[str, str]:
    """`count` active pairs (2 disks each), each the one member of its group."""
    base = utcnow() - timedelta(days=1)
    vols: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    for i in range(start, start + count):
        at = base + timedelta(milliseconds=i)
        prod, dr, pid, gid = (str(uuid.uuid4()) for _ in range(4))
        for vid, az in ((prod, AZ_A), (dr, AZ_B)):
            vols.append({
                "id": vid, "project_id": project_id, "user_id": "bench", "name": f"vol-{i}",
                "description": None, "size_gb": 10, "target_size_gb": 10, "volume_type": "SSD",
                "availability_zone": az, "status": "available", "multiattach": False,
                "bootable": False, "metadata_": {}, "created_at": at, "updated_at": at,
            })  # fmt: skip
        groups.append({
            "id": gid, "project_id": project_id, "name": f"group-{i}", "status": "available",
            "replication_status": "active", "replication_model": "hypermetro",
            "priority_station": AZ_A, "fault_level": "0", "progress": "100", "pending": {},
            "created_at": at, "updated_at": at,
        })  # fmt: skip
        pairs.append({
            "id": pid, "project_id": project_id, "name": f"pair-{i}", "status": "available",
            "replication_status": "active", "replication_model": "hypermetro", "progress": "100",
            "fault_level": "0", "volume_ids": f"{prod},{dr}", "priority_station": AZ_A,
            "production_volume_id": prod, "dr_volume_id": dr, "group_id": gid, "epoch": 1,
            "link_export": f"link-{i}", "volume_size_gb": 10, "volume_type": "SSD",
            "multiattach": False, "synced_bytes": 10 << 30, "arbitration": None, "verify": None,
            "resync_rate_limit_bytes_per_s": 0, "dirty_bytes": 0, "resync_rate_bytes_per_s": 0.0,
            "created_at": at, "updated_at": at,
        })  # fmt: skip
        claims += [{"volume_id": prod, "pair_id": pid}, {"volume_id": dr, "pair_id": pid}]
    with db.session() as session:
        for model, rows in ((Volume, vols), (ReplicationGroup, groups), (ReplicationPair, pairs),
                            (ReplicationClaim, claims)):  # fmt: skip
            for chunk in _chunks(rows):
                session.execute(insert(model), chunk)
    # The newest rows: a marker page after them holds limit rows at either step.
    return {"volume": vols[-1]["id"], "pair": pairs[-1]["id"], "group": groups[-1]["id"]}


def login(client: TestClient) -> tuple[str, str]:
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {
            "user": {"name": "admin", "domain": {"name": "Default"}, "password": PASSWORD}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}},
    }}  # fmt: skip
    r = client.post("/v3/auth/tokens", json=body)
    r.raise_for_status()
    return r.headers["X-Subject-Token"], r.json()["token"]["project"]["id"]


def p50_ms(client: TestClient, path: str, token: str, calls: int) -> tuple[float, float]:
    """p50 of the wall time and of the process's CPU time (every thread: the app runs
    in the test client's portal thread) of one call; CPU time is what a loaded
    machine inflates least."""
    wall, cpu = [], []
    for _ in range(calls):
        t0, c0 = time.perf_counter(), time.process_time()
        r = client.get(path, headers={"X-Auth-Token": token})
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1000,10000", help="pairs per step, ascending")
    parser.add_argument("--calls", type=int, default=15, help="calls per route and step")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    with tempfile.TemporaryDirectory(prefix="openevs-scale-api-") as tmp:
        url = f"sqlite:///{tmp}/openevs.db"
        upgrade(url)
        settings = load_settings(env={}, data_dir=tmp, database_url=url, admin_password=PASSWORD)
        runtime = Runtime(settings, Database(url))
        with runtime.db.session() as session:
            identity.bootstrap(session, PASSWORD)
        client = TestClient(create_app(runtime))
        token, project_id = login(client)
        results: dict[int, dict[str, tuple[float, float]]] = {}
        done = 0
        for n in steps:
            t0 = time.perf_counter()
            sample = seed(runtime.db, project_id, done, n - done)
            done = n
            print(f"N = {n:,} pairs ({2 * n:,} volumes, {n:,} groups): seeded in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
            results[n] = {}
            for label, path in routes(sample).items():
                wall, cpu = results[n][label] = p50_ms(
                    client, path.replace("{p}", project_id), token, args.calls
                )
                print(f"  {label:<24} p50 {wall:7.1f} ms wall {cpu:7.1f} ms cpu", flush=True)
        first, last = steps[0], steps[-1]
        print(f"\n| route | p50 at {first:,} | p50 at {last:,} | ratio | cpu p50 at {first:,} "
              f"| cpu p50 at {last:,} | ratio |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for label in results[first]:
            (a, ca), (b, cb) = results[first][label], results[last][label]
            wall = f"{a:.1f} ms | {b:.1f} ms | {b / a:.2f}"
            print(f"| {label} | {wall} | {ca:.1f} ms | {cb:.1f} ms | {cb / ca:.2f} |")
        runtime.close()


if __name__ == "__main__":
    main()
