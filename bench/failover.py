"""Failover benchmark: a 10-pair consistency group loses its primary AZ.

Stack: `openevs serve` (API + reconciler) with the primary and the DR AZ as
standalone `openevs agent` processes (OPENEVS_AGENT_URLS), so the primary AZ
can really die. Ten pairs of 1 GiB disks (8 MiB of data written to each
production disk before pairing) form one group; once it is active the
primary AZ's agent gets SIGKILL, and the clock starts at POST
os-failover-replication-consistency-group. Two times are measured:

(a) until GET shows the group `failovered`;
(b) until every DR disk has accepted an NBD write: each disk is granted with
    os-initialize_connection and written with NbdClient (write + flush),
    retried until it succeeds, all ten concurrently from the moment of the
    POST (before failover they are read-only exports or fenced, so the
    retries fail).

The old primary is then restarted and the group reprotected, and the next
repetition fails over back the other way.

The peer: there is no "same work done a simpler way" for a failover (making
ten local files writable is a chmod, and comparing with it says nothing).
What bounds a controller-driven failover is how often the controller looks
(the health-check interval OPENEVS_HEALTH_INTERVAL_S, which paces the
reconciler and the measurements of disks and links) and what one API
request costs on this machine at this moment (the 2-core box is shared).
So the failover time is printed as multiples of both, measured in the same
run: the configured health interval, and the median of 20 plain API
round-trips (GET one volume) taken just before each kill. A failover of a
few intervals is the reconciler reacting at once; tens of intervals would
mean it waits on timeouts of the dead agent.

`--stop` freezes the primary agent (SIGSTOP) instead of killing it: it stops
answering without refusing, so every call to it waits out the controller's
agent client timeout (10 s). That is the case of the reconciler's per-pass circuit breaker
(services/agent_errors.PassBreaker): one timeout per pass, not one per member.
The agent is thawed (SIGCONT) before the reprotect.

Run: .venv/bin/python bench/failover.py [--pairs 10 --repeat 3 --health-interval 0.5] [--stop]
     [--poll-s 0.01] [--status-poll-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.agents import StandaloneAgent  # noqa: E402
from tests.e2e.conftest import ServeProcess, Session  # noqa: E402
from tests.e2e.test_replication import make_disk, nbd_address, wait_json  # noqa: E402

from openevs.agent.nbd.client import NbdClient  # noqa: E402

MiB = 1 << 20
AZ_A, AZ_B = "az1.dc1", "az3.dc3"
GROUPS = "/v2/{p}/os-vendor-replication-consistency-groups"
PAIRS = "/v2/{p}/os-vendor-replications"
POLL_S = 0.01  # --poll-s: how often each of the pair-count + 1 clients asks again


async def write_once(addr: tuple[str, int, str, bool], offset: int, data: bytes) -> None:
    client = await NbdClient.connect(addr[0], addr[1], addr[2])
    try:
        await client.write(offset, data)
        await client.flush()
    finally:
        await client.close()


def seed_disks(session: Session, volume_ids: list[str], az: str) -> None:
    async def go() -> None:
        for i, vid in enumerate(volume_ids):
            addr = nbd_address(session, vid, az)
            for k in range(8):
                await write_once(addr, k * 64 * MiB, bytes([i + k + 1]) * MiB)

    asyncio.run(go())


def api_round_trip_s(session: Session, volume_id: str, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = session.get(f"/v2/{{p}}/volumes/{volume_id}")
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return statistics.median(times)


async def failover_once(
    session: Session, gid: str, new_primaries: list[str], poll_s: float = POLL_S,
    status_poll_s: float | None = None,
) -> tuple[float, float]:
    """POST failover; return (s to failovered, s until every new primary took an NBD write)."""
    headers = {"X-Auth-Token": session.token}
    async with httpx.AsyncClient(base_url=session.url(""), headers=headers, timeout=30) as http:

        slowest = 0.0  # the slowest status GET: the API's latency under the polling clients

        async def until_failovered(t0: float) -> float:
            nonlocal slowest
            while True:
                asked = time.perf_counter()
                r = await http.get(GROUPS.replace("{p}", session.project_id) + f"/{gid}")
                slowest = max(slowest, time.perf_counter() - asked)
                group = r.json()["replication_consistency_group"]
                if group["status"] == "failovered":
                    return time.perf_counter() - t0
                if group["status"].startswith("error"):
                    raise RuntimeError(f"failover failed: {group}")
                await asyncio.sleep(poll_s if status_poll_s is None else status_poll_s)

        async def until_writable(vid: str, t0: float) -> float:
            path = f"/v2/{session.project_id}/volumes/{vid}/action"
            while True:
                try:
                    r = await http.post(path, json={"os-initialize_connection": {"connector": {}}})
                    d = r.json()["connection_info"]["data"]
                    if not d["read_only"]:
                        await write_once((d["host"], d["port"], d["export_name"], False), 512 * MiB,
                                         b"\x5a" * 65536)
                        return time.perf_counter() - t0
                except Exception:  # noqa: BLE001 - not writable yet: read-only, fenced, refused
                    pass
                await asyncio.sleep(poll_s)

        t0 = time.perf_counter()
        r = await http.post(GROUPS.replace("{p}", session.project_id) + f"/{gid}/action",
                            json={"os-failover-replication-consistency-group": None})
        assert r.status_code == 200, r.text
        print(f"  the failover POST answered after {time.perf_counter() - t0:.3f}s")
        results = await asyncio.gather(until_failovered(t0), *(until_writable(v, t0) for v in new_primaries))
        print(f"  the slowest status GET meanwhile took {slowest:.3f}s")
    return results[0], max(results[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--health-interval", type=float, default=0.5, help="OPENEVS_HEALTH_INTERVAL_S")
    parser.add_argument("--stop", action="store_true", help="SIGSTOP the primary agent instead of SIGKILL")
    parser.add_argument("--poll-s", type=float, default=POLL_S,
                        help="each client's pause between two polls (they share the serve process)")
    parser.add_argument("--status-poll-s", type=float, default=None,
                        help="the status client's pause (default: --poll-s): a short one times the "
                             "failover finely while the 100 disk clients poll at --poll-s")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="openevs-bench-failover-"))
    agents = {AZ_A: StandaloneAgent(root, AZ_A), AZ_B: StandaloneAgent(root, AZ_B)}
    for agent in agents.values():
        agent.start()
    serve = ServeProcess(root / "serve", extra_env={
        "OPENEVS_AGENT_URLS": ",".join(f"{az}={a.url}" for az, a in agents.items()),
        "OPENEVS_HEALTH_INTERVAL_S": str(args.health_interval),
        "OPENEVS_AGENT_TIMEOUT_S": "60",
    })
    serve.start()
    try:
        s = serve.login()
        t = time.perf_counter()
        couples = [(make_disk(s, AZ_A), make_disk(s, AZ_B)) for _ in range(args.pairs)]
        seed_disks(s, [p for p, _ in couples], AZ_A)
        for _, dr in couples:
            nbd_address(s, dr, AZ_B)  # attach to a stopped server of its AZ: grants work later
        pair_ids = []
        for prod, dr in couples:
            r = s.post(PAIRS, {"replication": {"volume_ids": [prod, dr], "priority_station": AZ_A,
                                               "replication_model": "hypermetro"}})
            assert r.status_code == 202, r.text
            pair_ids.append(r.json()["replication"]["id"])
        for pid in pair_ids:
            wait_json(s, f"{PAIRS}/{pid}", "replication", lambda p: p["status"] == "available", 300)
        r = s.post(GROUPS, {"replication_consistency_group": {
            "name": "bench", "replication_ids": pair_ids, "priority_station": AZ_A,
            "replication_model": "hypermetro"}})
        assert r.status_code == 202, r.text
        gid = r.json()["replication_consistency_group"]["id"]
        wait_json(s, f"{GROUPS}/{gid}", "replication_consistency_group",
                  lambda g: g["status"] == "available" and g["replication_status"] == "active", 300)
        print(f"setup: {args.pairs} pairs of 1 GiB (8 MiB written each), grouped and active "
              f"in {time.perf_counter() - t:.1f}s; health interval {args.health_interval}s")

        primary = {AZ_A: [p for p, _ in couples], AZ_B: [d for _, d in couples]}
        station = AZ_A
        to_status, to_writable, rtts = [], [], []
        for i in range(args.repeat):
            other = AZ_B if station == AZ_A else AZ_A
            rtt = api_round_trip_s(s, primary[other][0])
            frozen = agents[station].proc
            if args.stop and frozen is not None:
                os.kill(frozen.pid, signal.SIGSTOP)
            else:
                agents[station].kill()
            a, b = asyncio.run(failover_once(s, gid, primary[other], args.poll_s, args.status_poll_s))
            to_status.append(a)
            to_writable.append(b)
            rtts.append(rtt)
            print(f"run {i + 1}: {station} {'frozen' if args.stop else 'killed'} -> failovered in {a:.3f}s, "
                  f"all {args.pairs} DR disks writable in {b:.3f}s (API round-trip {rtt * 1000:.1f} ms)")
            if args.stop and frozen is not None:
                os.kill(frozen.pid, signal.SIGCONT)
            else:
                agents[station].start()
            r = s.post(f"{GROUPS}/{gid}/action", {"os-reprotect-replication-consistency-group": None})
            assert r.status_code == 200, r.text
            wait_json(s, f"{GROUPS}/{gid}", "replication_consistency_group",
                      lambda g: g["status"] == "available" and g["replication_status"] == "active", 300)
            station = other

        rtt = statistics.median(rtts)
        interval = args.health_interval
        print()
        print(f"{'':28}{'median':>10}{'max':>10}{'/ health interval':>20}{'/ API round-trip':>18}")
        rows = (("to status failovered", to_status), ("to every DR disk writable", to_writable))
        for label, values in rows:
            med, worst = statistics.median(values), max(values)
            print(f"{label:28}{med:>9.3f}s{worst:>9.3f}s{med / interval:>19.1f}x{med / rtt:>17.0f}x")
        print(f"(health interval {interval}s; API round-trip median {rtt * 1000:.1f} ms; "
              f"{args.repeat} runs; ratios use the medians; {args.pairs} disk clients polling "
              f"every {args.poll_s * 1000:g} ms, the status client every "
              f"{(args.poll_s if args.status_poll_s is None else args.status_poll_s) * 1000:g} ms)")
    finally:
        serve.close()
        for agent in agents.values():
            agent.stop()


if __name__ == "__main__":
    main()
