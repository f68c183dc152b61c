"""Replication benchmark: two real agents on loopback, against peers measured in the same run.

(a) initial copy of a 10 GiB sparse disk holding 1 GiB of data (scattered 1-8 MiB
    extents) from one agent to another, versus `nbdcopy` between two
    `nbdkit file` exports of the same images (goal: <= 1.2x nbdcopy's time);
(b) fio 1 MiB sequential writes (ioengine=nbd) through the primary's user
    export on an active pair, versus the same disk unpaired (goal: >= 0.7).

Every round copies onto a fresh sparse DR volume (kept to the end: deleting a
volume of data takes long) and nbdcopy onto a fresh sparse file. With
--profile DIR, py-spy samples both agents during the copies and writes
DIR/{primary,secondary}-copy.txt (top functions by own time).

Run: .venv/bin/python bench/replication.py [--size-gib 10 --data-gib 1 --fio-s 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.mirror.support import MiB, PairedAgent, checksum  # noqa: E402

from openevs.contract import ReplicationRequest, ReplicationState
from openevs.domain.replication import Role  # noqa: E402

GiB = 1 << 30


def make_image(path: Path, size: int, data: int, seed: int = 7) -> list[tuple[int, int]]:
    """A sparse image with `data` bytes in scattered 1-8 MiB extents."""
    rng = random.Random(seed)
    block = os.urandom(8 * MiB)
    extents: list[tuple[int, int]] = []
    written = 0
    slots = size // (16 * MiB)  # one extent per 16 MiB slot at most: they never touch
    chosen = sorted(rng.sample(range(slots), k=min(slots, data // MiB)))
    with path.open("wb") as fh:
        fh.truncate(size)
        for slot in chosen:
            if written >= data:
                break
            length = min(rng.randint(1, 8) * MiB, data - written)
            offset = slot * 16 * MiB + rng.randint(0, 8) * MiB
            fh.seek(offset)
            fh.write(block[:length])
            extents.append((offset, length))
            written += length
        fh.flush()
        os.fsync(fh.fileno())
    return extents


def cpu_s(*pids: int) -> float:
    """CPU seconds (user + system) used so far by processes `pids`."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children_cpu_s() -> float:
    times = os.times()
    return times.children_user + times.children_system


def time_nbdcopy(src: Path, dst: Path, size: int) -> float:
    with dst.open("wb") as fh:
        fh.truncate(size)
    start = time.perf_counter()
    subprocess.run(
        ["nbdcopy", "--", "[", "nbdkit", "file", str(src), "]",
         "[", "nbdkit", "file", str(dst), "]"],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def time_initial_copy(a: PairedAgent, b: PairedAgent, epoch: int, dr: str) -> tuple[float, ReplicationState]:
    start = time.perf_counter()
    b.client.set_replication(
        dr, ReplicationRequest(role=Role.SECONDARY, epoch=epoch, pair_id="bench",
                                 link_export=f"link-{epoch}", initial_sync=True),
    )  # fmt: skip
    a.client.set_replication(
        "vol", ReplicationRequest(role=Role.PRIMARY, epoch=epoch, pair_id="bench",
                                  peer=b.peer(f"link-{epoch}"), initial_sync=True),
    )  # fmt: skip
    while True:
        state = a.state("vol")
        if state.replication_status == "active":
            return time.perf_counter() - start, state
        time.sleep(0.05)


def start_profiles(
    directory: Path | None, pids: dict[str, int], what: str = "copy"
) -> list[subprocess.Popen[bytes]]:
    """py-spy on each agent until stopped (`stop_profiles`), when a directory is given:
    DIR/<name>-<what>.raw."""
    if directory is None:
        return []
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--nonblocking",
                "--nolineno",
                "-o",
                str(directory / f"{name}-{what}.raw"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for name, pid in pids.items()
    ]


def stop_profiles(directory: Path | None, spies: list[subprocess.Popen[bytes]], what: str = "copy") -> None:
    """Stop the samplers and write each agent's top functions by own samples."""
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
    if directory is None:
        return
    for raw in sorted(directory.glob(f"*-{what}.raw")):
        own: dict[str, int] = {}
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            leaf = stack.rsplit(";", 1)[-1]
            own[leaf] = own.get(leaf, 0) + int(count)
            total += int(count)
        top = sorted(own.items(), key=lambda kv: -kv[1])[:25]
        lines = [f"{n / max(total, 1):6.1%}  {leaf}" for leaf, n in top]
        inclusive = sorted(_inclusive(raw).items(), key=lambda kv: -kv[1])[:40]
        text = [f"{total} samples; own time:", *lines, "", "total time (the function and what it called):"]
        text += [f"{n / max(total, 1):6.1%}  {frame}" for frame, n in inclusive]
        raw.with_suffix(".txt").write_text("\n".join(text) + "\n")
        print(f"profile {raw.stem}: " + "; ".join(lines[:5]))


def _inclusive(raw: Path) -> dict[str, int]:
    """Samples per frame counted once per stack it appears in."""
    counts: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        for frame in set(stack.split(";")):
            counts[frame] = counts.get(frame, 0) + int(count)
    return counts


FIO_SIZE = "2G"
FIO_BYTES = 2 * GiB  # what fio writes


def fio_write(agent: PairedAgent, export: str, seconds: int | None) -> float:
    """MiB/s of 1 MiB sequential writes through an NBD export (one pass when no seconds)."""
    timed = [f"--runtime={seconds}", "--time_based"] if seconds else []
    out = subprocess.run(
        ["fio", "--name=seqwrite", "--ioengine=nbd",
         f"--uri=nbd://127.0.0.1:{agent.nbd_port}/{export}", "--rw=write", "--bs=1M",
         "--iodepth=8", f"--size={FIO_SIZE}", *timed, "--output-format=json"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode:
        raise SystemExit(f"fio failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    job = json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]  # after its log lines
    return float(job["write"]["bw_bytes"]) / MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=int, default=10)
    parser.add_argument("--data-gib", type=float, default=1.0)
    parser.add_argument("--fio-s", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="py-spy both agents during the copies")
    parser.add_argument("--fio-twice", action="store_true", help="measure unpaired before and after the pair")
    args = parser.parse_args()
    size, data = args.size_gib * GiB, int(args.data_gib * GiB)
    root = Path(tempfile.mkdtemp(prefix="oevs-bench-"))
    a = PairedAgent(root / "a", "az1")
    b = PairedAgent(root / "b", "az2")
    try:
        a.pool.mkdir(parents=True)
        src = a.pool / "vol.img"
        extents = make_image(src, size, data)
        print(f"source: {size / GiB:.0f} GiB sparse, {sum(n for _, n in extents) / MiB:.0f} MiB "
              f"of data in {len(extents)} extents")  # fmt: skip
        a.start()
        b.start()

        assert a.proc is not None and b.proc is not None
        pids = (a.proc.pid, b.proc.pid)
        ours, theirs, our_cpu, their_cpu = [], [], [], []
        spies = start_profiles(args.profile, {"primary": a.proc.pid, "secondary": b.proc.pid})
        for round_ in range(args.rounds):
            dst = root / "nbdcopy-dst.img"
            dst.unlink(missing_ok=True)  # a fresh sparse target every round, for both
            before = children_cpu_s()
            theirs.append(time_nbdcopy(src, dst, size))
            their_cpu.append(children_cpu_s() - before)
            dr = f"dr{round_}"
            b.client.create_volume(dr, size)
            before = cpu_s(*pids)
            seconds, state = time_initial_copy(a, b, round_ + 1, dr)
            our_cpu.append(cpu_s(*pids) - before)
            ours.append(seconds)
            assert checksum(src) == checksum(b.image(dr)), "DR differs after the copy"
            print(f"round {round_ + 1}: openevs {seconds:.2f} s "
                  f"({state.resynced_bytes_total / MiB:.0f} MiB copied in total so far), "
                  f"nbdcopy {theirs[-1]:.2f} s")  # fmt: skip
            a.client.delete_replication("vol")
            b.client.delete_replication(dr)
        stop_profiles(args.profile, spies)
        dr = f"dr{args.rounds - 1}"  # holds the source's copy: only what fio writes differs
        best_ours, best_theirs = min(ours), min(theirs)
        print(f"(a) initial copy: openevs {best_ours:.2f} s, nbdcopy {best_theirs:.2f} s, "
              f"ratio {best_ours / best_theirs:.2f}x (goal <= 1.2x); CPU s per copy: "
              f"openevs {min(our_cpu):.2f}, nbdcopy+nbdkit {min(their_cpu):.2f}")  # fmt: skip

        a.client.grant_export("att", "vol", False)
        fio_write(a, "att", None)  # allocate the blocks once: both runs then overwrite
        before = cpu_s(*pids)
        unpaired = fio_write(a, "att", args.fio_s)
        unpaired_cpu = (cpu_s(*pids) - before) / (unpaired * args.fio_s / 1024)
        b.client.set_replication(
            dr, ReplicationRequest(role=Role.SECONDARY, epoch=100, pair_id="bench", link_export="link-fio"),
        )  # fmt: skip
        a.client.set_replication(
            "vol", ReplicationRequest(role=Role.PRIMARY, epoch=100, pair_id="bench",
                                      peer=b.peer("link-fio"), add_dirty=[(0, FIO_BYTES)]),
        )  # fmt: skip
        while a.state("vol").replication_status != "active":
            time.sleep(0.05)
        before = cpu_s(*pids)
        paired = fio_write(a, "att", args.fio_s)
        paired_cpu = (cpu_s(*pids) - before) / (paired * args.fio_s / 1024)
        state = a.state("vol")
        unpaired_again = None
        if args.fio_twice:
            a.client.delete_replication("vol")
            unpaired_again = fio_write(a, "att", args.fio_s)
            unpaired = max(unpaired, unpaired_again)
        assert state.replication_status == "active", state
        print(
            f"(b) fio 1 MiB seq write: unpaired {unpaired:.0f} MiB/s, "
            f"active pair {paired:.0f} MiB/s, ratio {paired / unpaired:.2f} (goal >= 0.7); "
            f"agent CPU s per GiB: unpaired {unpaired_cpu:.2f}, paired {paired_cpu:.2f}"
        )
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    finally:
        for agent in (a, b):
            agent.kill()
            agent.client.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
