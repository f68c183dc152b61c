"""The failover step of a consistency group in one reconciler pass, measured alone.

Stack: the controller's Runtime on SQLite with real embedded agents (unix
sockets, as `openevs serve` has them), no API; the group's pairs are rows
made directly (tests/support/rows.py), the old primary's agent a client of a
socket nobody serves (its AZ is gone), and the failover forced (no witness
lease to wait out). Timed: the one `Reconciler.run_once` that takes the
group from `failovering` to `failovered` (demotes tried, promotes, the rows
flipped, exports re-granted).

The peer, measured in the same run: an idle pass of the same reconciler
(nothing transitional), and the same failover of a small group; printed as
ratios, so the cost per member shows apart from what a pass costs anyway.

Run: nice -n 10 .venv/bin/python bench/failover_pass.py [--pairs 100 --small 10 --repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import make_settings  # noqa: E402
from tests.integration.reconciler.test_pass_breaker import add_group, status_of  # noqa: E402
from tests.support.rows import AZ_A  # noqa: E402

from openevs.agent.client import HttpAgentClient  # noqa: E402
from openevs.agent.supervisor import AgentSupervisor  # noqa: E402
from openevs.config import load_settings  # noqa: E402
from openevs.db.models import ReplicationGroup  # noqa: E402
from openevs.db.session import Database, upgrade  # noqa: E402
from openevs.reconciler.loop import Reconciler  # noqa: E402
from openevs.runtime import Runtime  # noqa: E402
from openevs.services import groups, identity  # noqa: E402


def timed_pass(reconciler: Reconciler) -> float:
    reconciler._last_health = 0.0  # noqa: SLF001 - the health check is due in this pass
    t = time.perf_counter()
    reconciler.run_once()
    return time.perf_counter() - t


def failover_pass(runtime: Runtime, project_id: str, members: int, dead_sock: Path) -> float:
    gid = add_group(runtime, project_id, members)
    reconciler = Reconciler(runtime)
    for _ in range(2):  # the agents' rows (NBD addresses) as a running controller has them
        timed_pass(reconciler)
    real = runtime.agents[AZ_A]
    runtime.agents[AZ_A] = HttpAgentClient(AZ_A, f"unix:{dead_sock}", timeout_s=1)
    try:
        groups.force_failover_group(runtime, project_id, gid)
        took = timed_pass(reconciler)
        status = status_of(runtime, ReplicationGroup, gid)
        assert status == "failovered", status
        return took
    finally:
        runtime.agents[AZ_A] = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="oevs-fpass-"))
    url = f"sqlite:///{root / 'openevs.db'}"
    upgrade(url)
    supervisor = AgentSupervisor(load_settings(env={}, data_dir=str(root / "agents"), nbd_port_base=0))
    supervisor.start()
    try:
        supervisor.wait_ready(timeout_s=60)
        settings = make_settings(root / "data", url, supervisor)
        runtime = Runtime(settings, Database(url), {az: supervisor.client_for(az) for az in settings.azs})
        with runtime.db.session() as session:
            project_id = identity.create_project(session, "bench-failover-pass").id
        idle_reconciler = Reconciler(runtime)
        timed_pass(idle_reconciler)
        big, small, idle = [], [], []
        for _ in range(args.repeat):
            idle.append(timed_pass(idle_reconciler))
            small.append(failover_pass(runtime, project_id, args.small, root / "nobody.sock"))
            big.append(failover_pass(runtime, project_id, args.pairs, root / "nobody.sock"))
            idle.append(timed_pass(idle_reconciler))
        b, s, i = statistics.median(big), statistics.median(small), statistics.median(idle)
        per_member = (b - s) / (args.pairs - args.small)
        print(f"failover pass, {args.pairs} members: {b * 1000:.0f} ms (median of {args.repeat})")
        print(f"failover pass, {args.small} members: {s * 1000:.0f} ms")
        print(f"idle pass (after the groups exist): {i * 1000:.0f} ms")
        print(f"per member: {per_member * 1000:.1f} ms; {args.pairs} members / idle pass: {b / i:.1f}x; "
              f"{args.pairs} / {args.small} members: {b / s:.1f}x")  # fmt: skip
        runtime.db.dispose()
    finally:
        supervisor.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
