"""The replicated write path against QEMU's active mirror, measured in one run.

The peer: `qemu-storage-daemon` exports a raw file over NBD and mirrors it,
through QMP `blockdev-mirror sync=full copy-mode=write-blocking`, to an
`nbdkit file` target (a guest write completes only once the target has it).
Against it: openevs unpaired, then the same volume paired with a second
agent on loopback. fio's nbd engine drives every side with the same jobs:

- 4 KiB random write, queue depth 16;
- 4 KiB random write, queue depth 1, an fsync (NBD FLUSH) after each write;
- 1 MiB sequential write, queue depth 8.

All disks are written full before they are measured (no first-touch costs
on either side). Printed: IOPS, MiB/s, write p99, CPU s per GiB written
(every process of the side: the agents; qemu-storage-daemon + nbdkit), and
the ratios paired/unpaired and paired/QEMU-mirrored. With --strace, one
more run of each job on the pair per agent counts its system calls per
write (`strace -c -f`) and `fdatasync` per flush (strace slows the traced
agent: those runs are not in the table). With --profile DIR, one more run
of each job on the pair under py-spy on both agents writes
DIR/{primary,secondary}-<job>.txt (own and total time per function).

Run: nice -n 10 .venv/bin/python bench/mirror_peer.py [--size-mib 1024 --seconds 3 --strace
     --profile DIR --jobs 4k-rand-qd16 --no-qemu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.replication import cpu_s, start_profiles, stop_profiles  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.mirror.support import MiB, PairedAgent  # noqa: E402

from openevs.contract import ReplicationRequest
from openevs.domain.replication import Role  # noqa: E402

GiB = 1 << 30
JOBS = {
    "4k-rand-qd16": ["--rw=randwrite", "--bs=4k", "--iodepth=16"],
    "4k-rand-qd1-fsync": ["--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"],
    "1m-seq-qd8": ["--rw=write", "--bs=1M", "--iodepth=8"],
}


@dataclass
class Result:
    iops: float
    mib_s: float
    write_p99_us: float
    flushes: int
    cpu_s_per_gib: float


def fill(path: Path, size: int) -> None:
    """Write the whole file (a repeated random 4 MiB block), then fsync it."""
    block = os.urandom(4 * MiB)
    with path.open("wb") as fh:
        for _ in range(0, size, len(block)):
            fh.write(block)
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


def fio(uri: str, job: str, size: int, seconds: int, pids: tuple[int, ...]) -> Result:
    before = cpu_s(*pids)
    out = subprocess.run(
        ["fio", f"--name={job}", "--ioengine=nbd", f"--uri={uri}", *JOBS[job], f"--size={size}",
         "--norandommap", f"--runtime={seconds}", "--time_based", "--output-format=json"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    cpu = cpu_s(*pids) - before
    if out.returncode:
        raise SystemExit(f"fio failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    stats = json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]
    write = stats["write"]
    written_gib = float(write["io_bytes"]) / GiB
    p99 = float(write["clat_ns"].get("percentile", {}).get("99.000000", 0)) / 1000
    return Result(
        iops=float(write["iops"]), mib_s=float(write["bw_bytes"]) / MiB, write_p99_us=p99,
        flushes=int(stats.get("sync", {}).get("total_ios", 0)), cpu_s_per_gib=cpu / max(written_gib, 1e-9),
    )  # fmt: skip


class Qmp:
    """The least of a QMP client: one command at a time, events skipped."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self._read()  # the greeting
        self.call("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise SystemExit("QMP closed")
        message: dict[str, Any] = json.loads(line)
        return message

    def call(self, command: str, **arguments: Any) -> Any:
        self._file.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "error" in reply:
                raise SystemExit(f"QMP {command}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


@contextmanager
def qemu_mirror(root: Path, size: int) -> Iterator[tuple[str, tuple[int, ...], Qmp]]:
    """qemu-storage-daemon exporting src.img, nbdkit serving tgt.img; the mirror is
    started by `start_mirror` (the export is plain until then)."""
    src, tgt, qmp_path = root / "qemu-src.img", root / "qemu-tgt.img", root / "qmp.sock"
    fill(src, size)
    fill(tgt, size)
    nbd_port, tgt_port = free_port(), free_port()
    target = subprocess.Popen(
        [
            "nbdkit",
            "--foreground",
            "--exit-with-parent",
            "-p",
            str(tgt_port),
            "-i",
            "127.0.0.1",
            "file",
            str(tgt),
        ]
    )
    daemon = subprocess.Popen(
        ["qemu-storage-daemon",
         "--blockdev", f"driver=file,node-name=file0,filename={src}",
         "--blockdev", "driver=raw,node-name=src,file=file0",
         "--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,addr.port={nbd_port}",
         "--export", "type=nbd,id=exp0,node-name=src,name=src,writable=on",
         "--chardev", f"socket,id=qmp0,path={qmp_path},server=on,wait=off",
         "--monitor", "chardev=qmp0"],
    )  # fmt: skip
    qmp = None
    try:
        wait_port(tgt_port)
        deadline = time.monotonic() + 10
        while not qmp_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        qmp = Qmp(qmp_path)  # the options are taken in order: the NBD server is up
        yield f"nbd://127.0.0.1:{nbd_port}/src", (daemon.pid, target.pid), qmp
    finally:
        if qmp is not None:
            qmp.close()
        for proc in (daemon, target):
            proc.terminate()
            proc.wait(timeout=10)


def start_mirror(qmp: Qmp, tgt_port: int) -> None:
    qmp.call("blockdev-add", driver="nbd", **{"node-name": "tgt"},
             server={"type": "inet", "host": "127.0.0.1", "port": str(tgt_port)})  # fmt: skip
    qmp.call("blockdev-mirror", **{"job-id": "m0", "copy-mode": "write-blocking"},
             device="src", target="tgt", sync="full")  # fmt: skip
    while True:
        jobs = qmp.call("query-block-jobs")
        if jobs and jobs[0].get("ready"):
            return
        time.sleep(0.05)


def syscalls(pid: int, run: Callable[[], None]) -> dict[str, int]:
    """Calls per system call of process `pid` (all threads) while `run()` runs."""
    out = Path(tempfile.mkstemp(prefix="oevs-strace-")[1])
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)])
    time.sleep(0.5)  # attached
    try:
        run()
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)
    calls: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    out.unlink()
    return calls


def _fio_into(results: list[Result], *args: Any) -> None:
    results.append(fio(*args))


def strace_pair(a: PairedAgent, b: PairedAgent, uri: str, size: int, seconds: int) -> None:
    """Per job: system calls per write on each agent, and fdatasync per flush."""
    assert a.proc is not None and b.proc is not None
    pids = (a.proc.pid, b.proc.pid)
    for job in JOBS:
        for name, agent in (("primary", a), ("secondary", b)):
            assert agent.proc is not None
            results: list[Result] = []
            bitmap_before = bitmap_syncs(a)
            calls = syscalls(agent.proc.pid, partial(_fio_into, results, uri, job, size, seconds, pids))
            r = results[0]
            writes = max(r.iops * seconds, 1.0)
            syncs = calls.get("fdatasync", 0) + calls.get("fsync", 0)
            top = sorted(calls.items(), key=lambda kv: -kv[1])[:7]
            line = f"strace {job} {name}: {sum(calls.values()) / writes:.2f} syscalls per write ("
            line += ", ".join(f"{k} {v / writes:.2f}" for k, v in top) + ")"
            if r.flushes:
                line += f"; {syncs} fdatasync+fsync for {r.flushes} flushes = {syncs / r.flushes:.2f}/flush"
                if name == "primary":
                    line += f" (of them {bitmap_syncs(a) - bitmap_before} of the dirty bitmap)"
            print(line)


def profile_pair(a: PairedAgent, b: PairedAgent, uri: str, size: int, seconds: int, directory: Path) -> None:
    """py-spy on both agents during one more run of each job on the pair."""
    assert a.proc is not None and b.proc is not None
    pids = (a.proc.pid, b.proc.pid)
    for job in JOBS:
        spies = start_profiles(directory, {"primary": a.proc.pid, "secondary": b.proc.pid}, job)
        time.sleep(0.3)
        try:
            r = fio(uri, job, size, seconds, pids)
        finally:
            stop_profiles(directory, spies, job)
        print(f"profiled {job}: {r.iops:.0f} IOPS under py-spy (not in the table); {directory}/*-{job}.txt")


def bitmap_syncs(agent: PairedAgent) -> int:
    """fdatasyncs of dirty bitmaps (the activity log) the agent made so far, from /metrics."""
    for line in agent.client.metrics_text().decode().splitlines():
        if line.startswith("openevs_replication_bitmap_sync_duration_seconds_count"):
            return int(float(line.split()[-1]))
    return 0


def table(rows: dict[str, dict[str, Result]]) -> None:
    print(f"{'job':20} {'side':16} {'IOPS':>9} {'MiB/s':>8} {'w p99 us':>9} {'CPU s/GiB':>10}")
    for job, sides in rows.items():
        for side, r in sides.items():
            print(
                f"{job:20} {side:16} {r.iops:9.0f} {r.mib_s:8.1f} {r.write_p99_us:9.0f} "
                f"{r.cpu_s_per_gib:10.1f}"
            )
        paired, unpaired, qemu = (
            sides["openevs paired"],
            sides["openevs unpaired"],
            sides.get("qemu mirrored"),
        )
        line = f"{job:20} paired/unpaired {paired.iops / unpaired.iops:.2f}"
        if qemu is not None:
            line += f", paired/qemu-mirrored {paired.iops / qemu.iops:.2f}"
            line += f" (CPU per GiB {paired.cpu_s_per_gib / qemu.cpu_s_per_gib:.2f}x)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--strace", action="store_true", help="count syscalls per write on the pair")
    parser.add_argument("--profile", type=Path, help="py-spy both agents in one more paired run per job")
    parser.add_argument("--no-qemu", action="store_true")
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    args = parser.parse_args()
    for job in set(JOBS) - set(args.jobs):
        del JOBS[job]
    size, seconds = args.size_mib * MiB, args.seconds
    root = Path(tempfile.mkdtemp(prefix="oevs-peer-"))
    rows: dict[str, dict[str, Result]] = {job: {} for job in JOBS}
    try:
        if not args.no_qemu and shutil.which("qemu-storage-daemon"):
            measure_qemu(root, size, seconds, rows)
        elif not args.no_qemu:
            print("qemu-storage-daemon not installed (qemu-system-common): openevs only")
        measure_openevs(root, size, seconds, rows, args.strace, args.profile)
        table(rows)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_qemu(root: Path, size: int, seconds: int, rows: dict[str, dict[str, Result]]) -> None:
    with qemu_mirror(root, size) as (uri, pids, qmp):
        for job in JOBS:
            rows[job]["qemu plain"] = fio(uri, job, size, seconds, pids)
        start_mirror(qmp, _target_port(pids[1]))
        for job in JOBS:
            rows[job]["qemu mirrored"] = fio(uri, job, size, seconds, pids)


def _target_port(pid: int) -> int:
    """The port nbdkit (pid) listens on, from its command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"-p") + 1])


def measure_openevs(
    root: Path, size: int, seconds: int, rows: dict[str, dict[str, Result]], strace: bool,
    profile: Path | None = None,
) -> None:  # fmt: skip
    a, b = PairedAgent(root / "a", "az1"), PairedAgent(root / "b", "az2")
    try:
        a.pool.mkdir(parents=True)
        fill(a.pool / "vol.img", size)
        a.start()
        b.start()
        assert a.proc is not None and b.proc is not None
        pids = (a.proc.pid, b.proc.pid)
        a.client.grant_export("att", "vol", False)
        uri = f"nbd://127.0.0.1:{a.nbd_port}/att"
        for job in JOBS:
            rows[job]["openevs unpaired"] = fio(uri, job, size, seconds, pids)
        b.client.create_volume("dr", size)
        b.client.set_replication(
            "dr", ReplicationRequest(role=Role.SECONDARY, epoch=1, pair_id="bench", link_export="link",
                                     initial_sync=True),
        )  # fmt: skip
        a.client.set_replication(
            "vol", ReplicationRequest(role=Role.PRIMARY, epoch=1, pair_id="bench", peer=b.peer("link"),
                                      initial_sync=True),
        )  # fmt: skip
        a.wait_status("vol", "active", timeout_s=120)
        for job in JOBS:
            rows[job]["openevs paired"] = fio(uri, job, size, seconds, pids)
        assert a.state("vol").replication_status == "active"
        if strace:
            strace_pair(a, b, uri, size, seconds)
        if profile is not None:
            profile_pair(a, b, uri, size, seconds, profile)
    finally:
        for agent in (a, b):
            agent.kill()
            agent.client.close()


if __name__ == "__main__":
    main()
