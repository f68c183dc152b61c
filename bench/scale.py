"""Scale benchmark: one `openevs serve` holding N idle replicated pairs.

Stack: `openevs serve` (SQLite, embedded agents, one process per AZ), every
production disk in az1.dc1 and every DR disk in az2.dc2, disks of 10 GB
(sparse: nothing written), pairs idle once active. The pairs are created in
steps (100, then up to 1,000; `--large` adds 10,000), and at each step the
bench prints:

- time to all active: from the first create of the step until every pair of
  the step is `available` + `active` (one list call per poll);
- list p50: GET pairs and volumes with limit=1000 (20 calls each);
- idle CPU over `--idle-s` of the controller (serve) and of each agent, as
  percent of one core, from /proc (utime + stime);
- open fds, RSS and threads of each agent, and fds per pair on the primary.

The peer is the first step (N = 100) measured in the same run: the ratios
printed at the end are idle CPU at N versus at 100 (the goal is flat: within
2 percentage points) and open fds per pair (the goal: at most 3).

Run: .venv/bin/python bench/scale.py [--steps 100,1000] [--large] [--idle-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.conftest import ServeProcess, Session  # noqa: E402

AZ_A, AZ_B = "az1.dc1", "az2.dc2"
PAIRS = "/v2/{p}/os-vendor-replications"
VOLUMES = "/v2/{p}/volumes"
CONCURRENCY = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Step:
    pairs: int
    to_active_s: float = 0.0
    pairs_p50_ms: float = 0.0
    volumes_p50_ms: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> % of one core
    fds: dict[str, int] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def processes(serve_pid: int) -> dict[str, int]:
    """controller -> serve's pid; each agent child by its AZ."""
    found = {"controller": serve_pid}
    for task in Path(f"/proc/{serve_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            az = next((a for a in (AZ_A, AZ_B) if a.encode() in cmd), None)
            if az is not None:
                found[az] = int(child)
    return found


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    before = {k: cpu_ticks(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {k: 100.0 * (cpu_ticks(p) - before[k]) / CLK_TCK / elapsed for k, p in pids.items()}


async def list_all(http: httpx.AsyncClient, path: str, key: str) -> list[dict[str, Any]]:
    """Every row, by marker pagination with limit=1000."""
    rows: list[dict[str, Any]] = []
    marker = ""
    while True:
        params = {"limit": "1000", **({"marker": marker} if marker else {})}
        r = await http.get(path, params=params)
        r.raise_for_status()
        page = r.json()[key]
        rows.extend(page)
        if len(page) < 1000:
            return rows
        marker = page[-1]["id"]


async def create_pairs(session: Session, count: int, size_gb: int) -> list[str]:
    """Create `count` disk couples and pair them; the pair ids."""
    headers = {"X-Auth-Token": session.token}
    vols = VOLUMES.replace("{p}", session.project_id)
    pairs = PAIRS.replace("{p}", session.project_id)
    slots = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=session.url(""), headers=headers, timeout=120) as http:

        async def post(path: str, body: dict[str, Any], key: str) -> str:
            async with slots:
                for _ in range(100):
                    r = await http.post(path, json=body)
                    if r.status_code == 202:
                        return str(r.json()[key]["id"])
                    if r.status_code not in (409, 503):
                        raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
                    await asyncio.sleep(0.2)  # a volume still attaching: try again
                raise RuntimeError(f"POST {path} kept failing: {r.status_code} {r.text}")

        async def couple() -> tuple[str, str]:
            prod, dr = await asyncio.gather(
                post(vols, {"volume": {"size": size_gb, "availability_zone": AZ_A}}, "volume"),
                post(vols, {"volume": {"size": size_gb, "availability_zone": AZ_B}}, "volume"),
            )
            return prod, dr

        couples = await asyncio.gather(*(couple() for _ in range(count)))
        wanted = {v for c in couples for v in c}
        while True:
            rows = await list_all(http, vols + "/detail", "volumes")
            states = {r["id"]: r["status"] for r in rows if r["id"] in wanted}
            bad = [s for s in states.values() if s == "error"]
            if bad:
                raise RuntimeError(f"{len(bad)} volumes in error")
            if len(states) == len(wanted) and all(s == "available" for s in states.values()):
                break
            await asyncio.sleep(0.5)

        def body(prod: str, dr: str) -> dict[str, Any]:
            return {"replication": {"volume_ids": [prod, dr], "priority_station": AZ_A,
                                    "replication_model": "hypermetro"}}  # fmt: skip

        return list(await asyncio.gather(*(post(pairs, body(p, d), "replication") for p, d in couples)))


async def wait_active(session: Session, pair_ids: list[str], timeout_s: float) -> None:
    headers = {"X-Auth-Token": session.token}
    path = PAIRS.replace("{p}", session.project_id)
    wanted = set(pair_ids)
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=session.url(""), headers=headers, timeout=120) as http:
        while True:
            rows = await list_all(http, path, "replications")
            ok = sum(
                1 for r in rows
                if r["id"] in wanted and r["status"] == "available" and r["replication_status"] == "active"
            )  # fmt: skip
            if ok == len(wanted):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {ok} of {len(wanted)} pairs active after {timeout_s:.0f} s")
            await asyncio.sleep(0.5)


def list_p50_ms(session: Session, path: str, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = session.get(path, params={"limit": "1000"})
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return 1000 * statistics.median(times)


def measure(serve: ServeProcess, session: Session, step: Step, idle_s: float) -> None:
    assert serve.proc is not None
    pids = processes(serve.proc.pid)
    step.pairs_p50_ms = list_p50_ms(session, PAIRS)
    step.volumes_p50_ms = list_p50_ms(session, VOLUMES + "/detail")
    time.sleep(2.0)  # let the last transitions settle before the idle window
    step.cpu = idle_cpu(pids, idle_s)
    step.fds = {k: open_fds(p) for k, p in pids.items()}
    step.rss_mib = {k: rss_mib(p) for k, p in pids.items()}


def report(steps: list[Step]) -> None:
    base = steps[0]
    print()
    cols = [("pairs", 7), ("to active", 11), ("list pairs", 12), ("list vols", 11), ("cpu ctl", 9),
            ("cpu az1", 9), ("cpu az2", 9), ("fds az1", 9), ("fds az2", 9), ("fd/pair", 9), ("rss az1", 9)]
    head = "".join(f"{name:>{width}}" for name, width in cols)
    print(head)
    for s in steps:
        print(
            f"{s.pairs:>7}{s.to_active_s:>10.1f}s{s.pairs_p50_ms:>10.0f}ms{s.volumes_p50_ms:>9.0f}ms"
            f"{s.cpu['controller']:>8.1f}%{s.cpu[AZ_A]:>8.1f}%{s.cpu[AZ_B]:>8.1f}%"
            f"{s.fds[AZ_A]:>9}{s.fds[AZ_B]:>9}{s.fds[AZ_A] / s.pairs:>9.2f}{s.rss_mib[AZ_A]:>7.0f}Mi"
        )
    print()
    print(f"ratios vs N={base.pairs} (same run):")
    for s in steps[1:]:
        ctl = s.cpu["controller"] - base.cpu["controller"]
        agents = (s.cpu[AZ_A] + s.cpu[AZ_B]) - (base.cpu[AZ_A] + base.cpu[AZ_B])
        ctl_x = s.cpu["controller"] / max(base.cpu["controller"], 0.1)
        fds, base_fds = s.fds[AZ_A] / s.pairs, base.fds[AZ_A] / base.pairs
        print(
            f"  N={s.pairs}: idle CPU controller {ctl_x:.1f}x ({ctl:+.1f} points),"
            f" agents {agents:+.1f} points;"
            f" fds/pair on the primary {fds:.2f} (N={base.pairs}: {base_fds:.2f});"
            f" list pairs {s.pairs_p50_ms / base.pairs_p50_ms:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,1000", help="cumulative pair counts")
    parser.add_argument("--large", action="store_true", help="add a 10,000-pair step")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--size-gb", type=int, default=10)
    args = parser.parse_args()
    counts = [int(x) for x in args.steps.split(",")] + ([10_000] if args.large else [])

    root = Path(tempfile.mkdtemp(prefix="openevs-bench-scale-"))
    serve = ServeProcess(root / "serve", extra_env={
        "OPENEVS_QUOTA_VOLUMES": str(3 * counts[-1]),
        "OPENEVS_QUOTA_GIGABYTES": str(3 * counts[-1] * args.size_gb),
        "OPENEVS_HEALTH_INTERVAL_S": "2.0",
        "OPENEVS_AGENT_TIMEOUT_S": "600",
    })  # fmt: skip
    serve.start()
    steps: list[Step] = []
    try:
        session = serve.login()
        have = 0
        for count in counts:
            step = Step(count)
            t = time.perf_counter()
            ids = asyncio.run(create_pairs(session, count - have, args.size_gb))
            asyncio.run(wait_active(session, ids, timeout_s=60 + 0.5 * count))
            step.to_active_s = time.perf_counter() - t
            have = count
            measure(serve, session, step, args.idle_s)
            steps.append(step)
            print(f"N={count}: {count - len(ids)}+{len(ids)} pairs active in {step.to_active_s:.1f}s,"
                  f" idle cpu {step.cpu}, fds {step.fds}", flush=True)  # fmt: skip
        report(steps)
    finally:
        serve.stop()


if __name__ == "__main__":
    main()
