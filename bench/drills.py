"""DR drill benchmark: what production notices while a group's DR disks are snapshotted.

Two real agents (production AZ, DR AZ), a consistency group of `--members`
pairs, each disk holding data. A writer on the production side writes 4 KiB
at random offsets of every member in turn, one write in flight (each one
acknowledged only once the DR agent wrote it), and records every write's
latency. Each round: a baseline window, then the group snapshot on the DR
agent (POST /snapshot-groups, the drill's one agent call), then the window
after it. Printed, as ratios to the baseline of the same round:

- the longest write during the snapshot call (the production-side pause),
  against the longest write of a baseline window of the same length;
- the mean write latency in the second after the snapshot (first writes to
  each DR region pay its copy-before-write) and in the second after that.

Run: nice -n 10 .venv/bin/python bench/drills.py [--members 4 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.mirror.support import PairedAgent, group_of_pairs  # noqa: E402

from openevs.agent.nbd.client import NbdClient  # noqa: E402
from openevs.contract_snapshots import GroupSnapshotMember, GroupSnapshotRequest  # noqa: E402

MiB = 1 << 20
BLOCK = 4096


async def fill(port: int, exports: list[str], area: int) -> None:
    for export in exports:
        async with await NbdClient.connect("127.0.0.1", port, export) as nbd:
            for offset in range(0, area, 4 * MiB):
                await nbd.write(offset, os.urandom(4 * MiB))
            await nbd.flush()


async def measure_round(a: PairedAgent, b: PairedAgent, exports: list[str], area: int,
                        request: GroupSnapshotRequest, window_s: float) -> dict[str, float]:  # fmt: skip
    rng = random.Random(len(request.members[0].snapshot_id))
    clients = [await NbdClient.connect("127.0.0.1", a.nbd_port, e) for e in exports]
    samples: list[tuple[float, float]] = []  # (start, latency)
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            for client in clients:
                start = time.perf_counter()
                await client.write(rng.randrange(area // BLOCK) * BLOCK, os.urandom(BLOCK))
                samples.append((start, time.perf_counter() - start))

    task = asyncio.create_task(writer())
    await asyncio.sleep(window_s)
    snap_start = time.perf_counter()
    await asyncio.to_thread(b.client.create_group_snapshot, request)
    snap_end = time.perf_counter()
    await asyncio.sleep(2.0)
    stop.set()
    await task
    for client in clients:
        await client.close()

    def during(lo: float, hi: float) -> list[float]:
        return [lat for start, lat in samples if lo <= start < hi or lo <= start + lat < hi]

    call_s = snap_end - snap_start
    base = during(snap_start - window_s, snap_start)
    base_max = max(during(snap_start - call_s - 0.01, snap_start - 0.01) or [0.0])
    return {
        "call_ms": call_s * 1000,
        "base_mean_ms": statistics.mean(base) * 1000,
        "base_max_ms": max(base_max, 1e-6) * 1000,
        "during_max_ms": max(during(snap_start, snap_end) or [0.0]) * 1000,
        "after1_mean_ms": statistics.mean(during(snap_end, snap_end + 1.0)) * 1000,
        "after2_mean_ms": statistics.mean(during(snap_end + 1.0, snap_end + 2.0)) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--area-mib", type=int, default=64, help="written area of each disk")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=1.5)
    args = parser.parse_args()
    area = args.area_mib * MiB
    root = Path(tempfile.mkdtemp(prefix="oevs-drillbench-"))
    a, b = PairedAgent(root / "a", "az1.dc1"), PairedAgent(root / "b", "az2.dc2")
    try:
        a.start()
        b.start()
        volumes = [f"m{i}" for i in range(args.members)]
        group_of_pairs(a, b, volumes, area)
        exports = [f"att-{v}" for v in volumes]
        asyncio.run(fill(a.nbd_port, exports, area))  # replicated: the DR disks hold data too
        print(f"{args.members} members, {args.area_mib} MiB each, 4 KiB writes at queue depth 1")
        print(f"{'round':>5} {'call ms':>8} {'base mean':>9} {'pause max':>9} {'/base max':>9} "
              f"{'1st s mean':>10} {'ratio':>6} {'2nd s':>6} {'ratio':>6}")  # fmt: skip
        for rnd in range(args.rounds):
            request = GroupSnapshotRequest(members=[
                GroupSnapshotMember(volume_id=f"{v}-dr", snapshot_id=f"drill{rnd}-{v}") for v in volumes
            ])  # fmt: skip
            r = asyncio.run(measure_round(a, b, exports, area, request, args.window_s))
            print(f"{rnd:>5} {r['call_ms']:>8.1f} {r['base_mean_ms']:>9.2f} {r['during_max_ms']:>9.2f} "
                  f"{r['during_max_ms'] / r['base_max_ms']:>9.2f} {r['after1_mean_ms']:>10.2f} "
                  f"{r['after1_mean_ms'] / r['base_mean_ms']:>6.2f} {r['after2_mean_ms']:>6.2f} "
                  f"{r['after2_mean_ms'] / r['base_mean_ms']:>6.2f}")  # fmt: skip
        print(
            "latencies in ms; 'pause max': the longest write while the snapshot call ran, "
            "'/base max': over the longest write of a baseline window as long as the call"
        )
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    finally:
        for agent in (a, b):
            agent.kill()
            agent.client.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
