"""Benchmark a rate-limited resync: does it run at the set rate, and is its ETA honest?

    .venv/bin/python bench/resync_rate.py [--size-gib 1] [--rate-mib-s 64] [--limit pair|agent]

Two real agents (`python -m openevs.agent`) on loopback, driven through
their control API as the controller drives them: a 1 GiB volume full of
data on the primary, a blank one on the secondary, then an initial sync
with a resync limit (the pair's own, or the agent's `--resync-rate`). The
primary's replication state is polled every 0.1 s. Printed: the achieved
copy rate against the set rate (the peer figure measured in the same run:
the same copy without a limit), and the ETA the agent showed at 25 %
progress against the time the rest really took. Figures, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from openevs.agent.client import HttpAgentClient
from openevs.contract import AgentError, Peer, ReplicationRequest
from openevs.domain.replication import ReplicationStatus, Role

MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def agent(root: Path, az: str, resync_rate: int) -> Iterator[tuple[HttpAgentClient, int]]:
    control, nbd = free_port(), free_port()
    cmd = [sys.executable, "-m", "openevs.agent", "--az", az, "--pool", str(root / az),
           "--listen", f"127.0.0.1:{control}", "--nbd", f"127.0.0.1:{nbd}", "--resync-rate", str(resync_rate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = HttpAgentClient(az, f"http://127.0.0.1:{control}", timeout_s=30)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.health()
                break
            except AgentError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"agent {az} did not start") from None
                time.sleep(0.1)
        yield client, nbd
    finally:
        client.close()
        proc.terminate()
        proc.wait(20)


def fill(path: Path, size: int) -> None:
    block = os.urandom(4 * MIB)
    with path.open("r+b") as f:
        for offset in range(0, size, len(block)):
            f.seek(offset)
            f.write(block[: min(len(block), size - offset)])
        f.flush()
        os.fsync(f.fileno())


def resync(size: int, pair_rate: int, agent_rate: int) -> tuple[float, float | None, float]:
    """One initial sync: (seconds from 5 % to 95 %, ETA shown at 25 %, seconds the rest took)."""
    with tempfile.TemporaryDirectory(prefix="openevs-resync-") as tmp:
        root = Path(tmp)
        with agent(root, "az-a", agent_rate) as (a, _), agent(root, "az-b", 0) as (b, b_nbd):
            a.create_volume("prod", size)
            b.create_volume("dr", size)
            fill(root / "az-a" / "prod.img", size)
            secondary = ReplicationRequest(
                role=Role.SECONDARY, epoch=1, pair_id="bench", link_export="link-bench", initial_sync=True
            )
            b.set_replication("dr", secondary)
            peer = Peer(host="127.0.0.1", port=b_nbd, export="link-bench")
            primary = ReplicationRequest(role=Role.PRIMARY, epoch=1, pair_id="bench", initial_sync=True,
                                         peer=peer, resync_rate_bytes_per_s=pair_rate)  # fmt: skip
            a.set_replication("prod", primary)
            samples: list[tuple[float, int, float | None]] = []  # (time, copied, eta shown)
            while True:
                state = a.get_replication("prod")
                now = time.monotonic()
                if state.replication_status is ReplicationStatus.ACTIVE and samples:
                    samples.append((now, size, 0.0))
                    break
                if state.sync is not None:
                    samples.append((now, state.sync.copied_bytes, state.resync_eta_s))
                time.sleep(0.1)
    t5 = next(t for t, c, _ in samples if c >= size * 0.05)
    t95 = next(t for t, c, _ in samples if c >= size * 0.95)
    t25, _, eta25 = next(s for s in samples if s[1] >= size * 0.25)
    return t95 - t5, eta25, samples[-1][0] - t25


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--rate-mib-s", type=float, default=64.0)
    parser.add_argument("--limit", choices=["pair", "agent"], default="pair")
    args = parser.parse_args()
    size = int(args.size_gib * 1024) * MIB
    rate = int(args.rate_mib_s * MIB)
    mid = size * 0.9 / MIB  # MiB copied between 5 % and 95 %
    free_s, _, _ = resync(size, 0, 0)
    pair_rate, agent_rate = (rate, 0) if args.limit == "pair" else (0, rate)
    limited_s, eta25, rest_s = resync(size, pair_rate, agent_rate)
    achieved = mid / limited_s
    print(f"resync of {size // MIB} MiB, {args.limit} limit {args.rate_mib_s:g} MiB/s")
    print("| run | MiB/s (5..95 %) | ratio to the set rate |")
    print("|---|---|---|")
    print(f"| no limit (peer) | {mid / free_s:.1f} | {mid / free_s / args.rate_mib_s:.2f} |")
    print(f"| limited | {achieved:.1f} | {achieved / args.rate_mib_s:.3f} |")
    shown = "none" if eta25 is None else f"{eta25:.1f} s"
    ratio = "-" if eta25 is None else f"{eta25 / rest_s:.3f}"
    print(f"ETA shown at 25 %: {shown}; the rest took {rest_s:.1f} s; ratio {ratio}")


if __name__ == "__main__":
    main()
