"""Arbitration benchmark: the agents of two AZs and a standalone witness, each in its
network namespace (tests/faults/partitions.py; needs root), peers measured in the same run.

(a) write stall when the link between the AZs breaks and the witness grants: from the
    cut to the first write acknowledged alone, against the link's own detection time
    (cut -> the primary reports its link down) and against the same cut in static
    priority (no witness), measured in the same run;
(b) failover time, primary AZ isolated -> every DR disk writable, for a group of 1
    and of 10 pairs: driven at the agents the way the controller does it, asked at
    once (the witness's grant at a higher epoch, the old primaries' fencing tried,
    the DR disks promoted); and (`--auto`) the automatic failover of `openevs serve`
    (OPENEVS_AUTO_FAILOVER, after 1 s), against the time the DR agent takes to see
    its link from the primary gone;
(c) the normal write path with and without a witness configured: fio through the
    primary's export of an active pair (4 KiB random writes at queue depth 1, and
    1 MiB sequential writes at depth 8), as a ratio.

Run: sudo .venv/bin/python bench/arbitration.py [--rounds 3 --fio-s 5 --auto]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.controlled import ControlledStack  # noqa: E402
from tests.faults.harness import NBD_PORT, regrant  # noqa: E402
from tests.faults.partitions import PartitionStack, Trial  # noqa: E402

from openevs.agent.nbd.client import NbdClient  # noqa: E402

MiB = 1 << 20


def stall_at_cut(stack: PartitionStack, trial: Trial) -> tuple[float, float]:
    """(cut -> first write acknowledged alone, cut -> link reported down), in seconds.

    The write acknowledged alone is the first one that was held up by the cut (it waited
    for the link to be declared down, then for the gate): writes that reached the peer
    just after the cut began went through as usual."""
    pid = next(iter(trial.pairs))
    disk = trial.disk(pid, "a")
    acks: list[float] = []
    sent: list[float] = []
    stop = threading.Event()

    async def writer() -> None:
        client = await NbdClient.connect(stack.net.host_a, NBD_PORT, trial.exports[disk])
        try:
            i = 0
            while not stop.is_set():
                sent.append(time.monotonic())
                await client.write((i % 256) * 4096, os.urandom(4096))
                acks.append(time.monotonic())
                i += 1
        finally:
            client.abort()

    thread = threading.Thread(target=lambda: asyncio.run(writer()), daemon=True)
    thread.start()
    while len(acks) < 50:
        time.sleep(0.01)
    link_down_s = None
    with stack.agents["a"].client(2) as client:
        t_cut = time.monotonic()
        stack.net.cut("a", "b")
        while link_down_s is None or not _held_up(sent, acks, t_cut):
            if link_down_s is None and not client.get_replication(disk).link_up:
                link_down_s = time.monotonic() - t_cut
            time.sleep(0.01)
    stall_s = _held_up(sent, acks, t_cut)[0] - t_cut
    stop.set()
    thread.join(30)
    stack.net.heal()
    trial.wait_active("a", 60)
    return stall_s, link_down_s


def _held_up(sent: list[float], acks: list[float], t_cut: float) -> list[float]:
    """Ack times of the writes acknowledged after the cut that took over half a second."""
    done = list(zip(sent, acks, strict=False))
    return [a for s, a in done if a > t_cut and a - s > 0.5]


async def _accepts_a_write(host: str, port: int, export: str) -> bool:
    try:
        client = await NbdClient.connect(host, port, export)
        try:
            await client.write(0, b"\x5a" * 4096)
            return True
        finally:
            client.abort()
    except Exception:  # noqa: BLE001 - not writable (yet)
        return False


def _until_all_writable(addresses: Callable[[str], tuple[str, int, str, bool]], disks: list[str]) -> None:
    """Return when every disk accepted a write through the address `addresses` gives it now."""

    async def writable(disk: str) -> None:
        while True:
            host, port, export, read_only = await asyncio.to_thread(addresses, disk)
            if not read_only and await _accepts_a_write(host, port, export):
                return
            await asyncio.sleep(0.02)

    async def all_writable() -> None:
        await asyncio.gather(*(writable(d) for d in disks))

    asyncio.run(all_writable())


def failover_time(stack: PartitionStack, n_pairs: int) -> float:
    """Primary AZ isolated -> every DR disk accepted a write (the failover driven at the
    agents the way the controller does it, asked at once)."""
    trial = stack.trial(n_pairs=n_pairs).setup(record=False)
    try:
        t0 = time.monotonic()
        stack.net.isolate("a")
        trial.failover()
        _until_all_writable(lambda d: (stack.net.host_b, NBD_PORT, trial.exports[d], False),
                            [dr for _, dr in trial.pairs.values()])  # fmt: skip
        return time.monotonic() - t0
    finally:
        stack.net.heal()
        trial.cleanup()


def auto_failover_time(stack: ControlledStack, n_pairs: int) -> float:
    """`openevs serve` with automatic failover: primary AZ isolated -> every DR disk
    accepted a write (the failover decided and carried out by the controller)."""
    trial = stack.trial(n_pairs=n_pairs).setup(record=False)
    try:
        t0 = time.monotonic()
        stack.net.isolate("a")
        _until_all_writable(lambda d: regrant(stack.session, d), [dr for _, dr in trial.pairs.values()])
        return time.monotonic() - t0
    finally:
        stack.net.heal()


def fio(stack: PartitionStack, trial: Trial, seconds: int, job: list[str]) -> float:
    """fio's write IOPS through the primary's export of the trial's first pair."""
    disk = trial.disk(next(iter(trial.pairs)), "a")
    uri = f"nbd://{stack.net.host_a}:{NBD_PORT}/{trial.exports[disk]}"
    out = subprocess.run(
        ["fio", "--name=w", "--ioengine=nbd", f"--uri={uri}", "--size=12M", f"--runtime={seconds}",
         "--time_based", "--output-format=json", *job],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode:
        raise SystemExit(f"fio failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    return float(json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]["write"]["iops"])


RANDOM_4K = ["--rw=randwrite", "--bs=4k", "--iodepth=1"]
SEQ_1M = ["--rw=write", "--bs=1M", "--iodepth=8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fio-s", type=int, default=5)
    parser.add_argument("--auto", action="store_true", help="also time `openevs serve`'s automatic failover")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="oevs-bench-arb-"))
    stack = PartitionStack(root).start()
    try:
        witness_rtt = []
        for _ in range(20):
            started = time.monotonic()
            stack.witness.client("bench").ping()
            witness_rtt.append((time.monotonic() - started) * 1000)
        print(f"witness round trip (connect + hello + ping, from the controller's namespace): "
              f"median {statistics.median(witness_rtt):.1f} ms")  # fmt: skip

        arbitrated = stack.trial(n_pairs=1).setup(record=False)
        static = stack.trial(n_pairs=1, arbitrated=False).setup(record=False)
        rows: dict[str, list[tuple[float, float]]] = {"witness": [], "static": []}
        for round_ in range(args.rounds):
            for name, trial in (("witness", arbitrated), ("static", static)):
                stall, down = stall_at_cut(stack, trial)
                rows[name].append((stall, down))
                print(f"round {round_ + 1} {name}: cut -> first write acknowledged alone {stall:.3f} s,"
                      f" cut -> link reported down {down:.3f} s")  # fmt: skip
        w = statistics.median(s for s, _ in rows["witness"])
        st = statistics.median(s for s, _ in rows["static"])
        down = statistics.median(d for _, d in rows["witness"] + rows["static"])
        print(f"(a) write stall at a cut: with the witness {w:.3f} s, static priority {st:.3f} s "
              f"(ratio {w / st:.3f}); the link's detection {down:.3f} s (stall - detection with the "
              f"witness {w - down:+.3f} s)")  # fmt: skip

        for n in (1, 10):
            times = [failover_time(stack, n) for _ in range(args.rounds)]
            print(f"(b) failover, primary AZ isolated -> all DR disks writable, {n} pair(s): median "
                  f"{statistics.median(times):.3f} s (max {max(times):.3f} s) with a witness round trip of "
                  f"{statistics.median(witness_rtt):.1f} ms")  # fmt: skip

        for label, job in (("4 KiB random, depth 1", RANDOM_4K), ("1 MiB sequential, depth 8", SEQ_1M)):
            with_w, without = [], []
            for _ in range(args.rounds):
                with_w.append(fio(stack, arbitrated, args.fio_s, job))
                without.append(fio(stack, static, args.fio_s, job))
            ratio = statistics.median(with_w) / statistics.median(without)
            print(f"(c) {label} on an active pair: with a witness {statistics.median(with_w):.0f} IOPS, "
                  f"without {statistics.median(without):.0f} IOPS, ratio {ratio:.3f}")  # fmt: skip
        for trial in (arbitrated, static):
            state = stack.agents["a"].client().get_replication(trial.disk(next(iter(trial.pairs)), "a"))
            assert state.replication_status == "active", state
    finally:
        stack.close()
    if args.auto:
        auto = ControlledStack(root / "auto", auto_failover=True, auto_failover_after_s=1.0).start()
        try:
            for n in (1, 10):
                times = [auto_failover_time(auto, n) for _ in range(args.rounds)]
                print(f"(b) automatic failover (after 1 s), primary AZ isolated -> all DR disks "
                      f"writable, {n} pair(s): median {statistics.median(times):.3f} s "
                      f"(max {max(times):.3f} s)")  # fmt: skip
        finally:
            auto.close()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
