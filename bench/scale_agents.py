"""Scale benchmark of the agents alone: N pairs configured straight on two agents.

`bench/scale.py` drives the whole stack through the API, which makes 10,000
pairs a long run on this machine; the per-pair idle cost lived in the
agents (timers per replica, four link connections per pair), so this bench
measures them alone at 10,000 pairs in minutes: two standalone `openevs
agent` processes, N production disks of 10 GB (sparse) on the first and N
DR disks on the second, each couple paired through the control APIs as the
controller does (secondary first), then idle. Per step it prints the time
until every pair is active (GET /replication on the primary), the idle CPU
of each agent over `--idle-s`, open fds, RSS, the link connections and fds
per pair. The peer is the first step (N = 100) in the same run.

Run: .venv/bin/python bench/scale_agents.py [--steps 100,10000] [--idle-s 10]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import cpu_ticks, idle_cpu, open_fds, rss_mib  # noqa: E402
from tests.e2e.agents import StandaloneAgent  # noqa: E402

from openevs.agent.client import HttpAgentClient  # noqa: E402
from openevs.contract import Peer, ReplicationRequest
from openevs.domain.replication import Role  # noqa: E402

AZ_A, AZ_B = "az1.dc1", "az2.dc2"
GB = 10**9
WORKERS = 4
FD_LIMIT = 65536


def configure(agents: dict[str, StandaloneAgent], first: int, count: int, size_gb: int) -> None:
    local = threading.local()
    b = agents[AZ_B]

    def clients() -> tuple[HttpAgentClient, HttpAgentClient]:
        if not hasattr(local, "pair"):
            local.pair = tuple(HttpAgentClient(az, agents[az].url, timeout_s=60) for az in (AZ_A, AZ_B))
        return local.pair  # type: ignore[no-any-return]

    def one(i: int) -> None:
        ca, cb = clients()
        prod, dr, link = f"v{i}", f"d{i}", f"link-{i:06d}"
        ca.create_volume(prod, size_gb * GB)
        cb.create_volume(dr, size_gb * GB)
        cb.set_replication(dr, ReplicationRequest(role=Role.SECONDARY, epoch=1, pair_id=f"p{i}",
                                                  link_export=link, initial_sync=True))  # fmt: skip
        peer = Peer(host="127.0.0.1", port=b.nbd_port, export=link)
        ca.set_replication(prod, ReplicationRequest(role=Role.PRIMARY, epoch=1, pair_id=f"p{i}", peer=peer,
                                                    mirroring=True, initial_sync=True))  # fmt: skip

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, range(first, first + count)))


def wait_active(agent: StandaloneAgent, count: int, timeout_s: float) -> None:
    client = HttpAgentClient(AZ_A, agent.url, timeout_s=120)
    deadline = time.monotonic() + timeout_s
    while True:
        states = client.list_replication()
        active = sum(1 for s in states.values() if s.replication_status == "active")
        if active >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {active} of {count} pairs active")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,10000", help="cumulative pair counts")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--size-gb", type=int, default=10)
    args = parser.parse_args()
    counts = [int(x) for x in args.steps.split(",")]
    # 10,000 pairs need ~20,000 descriptors per agent (2 per pair): raise the limit the
    # agents inherit when we may (root), as a deployment of that size would.
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    print(f"descriptor limit of the agents: {resource.getrlimit(resource.RLIMIT_NOFILE)}")

    root = Path(tempfile.mkdtemp(prefix="openevs-bench-agents-"))
    agents = {az: StandaloneAgent(root, az) for az in (AZ_A, AZ_B)}
    for agent in agents.values():
        agent.start()
    rows = []
    try:
        have = 0
        for count in counts:
            t = time.perf_counter()
            configure(agents, have, count - have, args.size_gb)
            wait_active(agents[AZ_A], count, timeout_s=120 + 0.2 * count)
            to_active = time.perf_counter() - t
            have = count
            time.sleep(2.0)
            pids = {az: a.proc.pid for az, a in agents.items() if a.proc is not None}
            assert all(cpu_ticks(p) >= 0 for p in pids.values())
            cpu = idle_cpu(pids, args.idle_s)
            health = HttpAgentClient(AZ_A, agents[AZ_A].url, timeout_s=60).health()
            rows.append((count, to_active, cpu, {k: open_fds(p) for k, p in pids.items()},
                         {k: rss_mib(p) for k, p in pids.items()}, health.peer_connections))  # fmt: skip
            print(f"N={count}: active after {to_active:.1f}s, idle cpu {cpu}", flush=True)
    finally:
        for agent in agents.values():
            agent.kill()
    print()
    print(f"{'pairs':>7}{'to active':>11}{'cpu az1':>9}{'cpu az2':>9}{'fds az1':>9}{'fds az2':>9}"
          f"{'fd/pair':>9}{'links':>7}{'rss az1':>9}{'rss az2':>9}")  # fmt: skip
    for count, to_active, cpu, fds, rss, links in rows:
        print(f"{count:>7}{to_active:>10.1f}s{cpu[AZ_A]:>8.1f}%{cpu[AZ_B]:>8.1f}%{fds[AZ_A]:>9}{fds[AZ_B]:>9}"
              f"{fds[AZ_A] / count:>9.2f}{links:>7}{rss[AZ_A]:>7.0f}Mi{rss[AZ_B]:>7.0f}Mi")  # fmt: skip
    base = rows[0]
    print()
    for count, _t, cpu, fds, _rss, _links in rows[1:]:
        delta = cpu[AZ_A] + cpu[AZ_B] - base[2][AZ_A] - base[2][AZ_B]
        print(f"N={count} vs N={base[0]}: idle CPU of both agents {delta:+.1f} points (goal: within 2);"
              f" fds per pair on the primary {fds[AZ_A] / count:.2f} (goal: at most 3)")


if __name__ == "__main__":
    main()
