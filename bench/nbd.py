"""Benchmark the openevs NBD server against nbdkit and qemu-nbd with fio's nbd engine.

    .venv/bin/python bench/nbd.py [--size-gib 2] [--runtime-s 5] [--image PATH] [--uvloop]

One image file (filled with data so that no server can skip holes, then read
into the page cache) is served in turn by each server on 127.0.0.1; each job
runs for `--runtime-s` seconds (median of `--repeat` runs), all servers in turn
per job, with a sync before each run. The table shows MiB/s for 1 MiB sequential
jobs and IOPS for 4 KiB random jobs, and the ratio openevs/peer; a second
table shows each server's CPU time per request, which is much less sensitive
to other load on the machine than throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

JOBS = [
    ("seq write 1M qd1", "write", "1m", 1),
    ("seq write 1M qd16", "write", "1m", 16),
    ("seq read 1M qd1", "read", "1m", 1),
    ("seq read 1M qd16", "read", "1m", 16),
    ("rand write 4k qd1", "randwrite", "4k", 1),
    ("rand write 4k qd16", "randwrite", "4k", 16),
    ("rand read 4k qd1", "randread", "4k", 1),
    ("rand read 4k qd16", "randread", "4k", 16),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def server_commands(image: Path, port: int, uvloop: bool) -> dict[str, list[str]]:
    ours = [sys.executable, "-m", "openevs.agent.nbd", str(image), "--port", str(port)]
    return {
        "openevs": ours + (["--uvloop"] if uvloop else []),
        "nbdkit": ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "file", f"file={image}"],
        "qemu-nbd": [
            "qemu-nbd",
            "-f",
            "raw",
            "-t",
            "-e",
            "16",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            str(image),
        ],
    }


@contextlib.contextmanager
def serving(cmd: list[str], port: int) -> Iterator[int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_fio(
    port: int, pid: int, rw: str, bs: str, depth: int, size: str, runtime_s: int,
    *, uri: str | None = None, env: dict[str, str] | None = None,
) -> tuple[float, float]:
    """(MiB/s for 1 MiB jobs or IOPS for 4 KiB jobs, server CPU µs per request)."""
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        [
            "fio",
            "--name=bench",
            "--ioengine=nbd",
            f"--uri={uri or f'nbd://127.0.0.1:{port}/'}",
            f"--rw={rw}",
            f"--bs={bs}",
            f"--iodepth={depth}",
            f"--size={size}",
            f"--runtime={runtime_s}",
            "--time_based",
            "--randrepeat=0",
            "--output-format=json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    figure = side["bw_bytes"] / (1 << 20) if bs == "1m" else side["iops"]
    return figure, 1e6 * cpu / max(1, side["total_ios"])


def print_table(
    title: str,
    jobs: list[tuple[str, str, str, int]],
    servers: list[str],
    values: dict[str, dict[str, float]],
    ratio: Callable[[float, float], float],
    units: bool = True,
) -> None:
    print(title)
    header = f"| {'job':24} | {'openevs':>9} |"
    for peer in servers[1:]:
        header += f" {peer:>9} | {'ratio':>6} |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for label, _rw, bs, _depth in jobs:
        unit = ("MiB/s" if bs == "1m" else "IOPS") if units else ""
        ours = values["openevs"][label]
        row = f"| {label + ' ' + unit:24} | {ours:9.0f} |"
        for peer in servers[1:]:
            theirs = values[peer][label]
            row += f" {theirs:9.0f} | {ratio(ours, theirs):6.2f} |"
        print(row)


def prepare(image: Path, size_gib: int) -> None:
    image.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(image, "wb") as f:
        for _ in range(size_gib * 1024):
            f.write(block)
    with open(image, "rb") as f:  # into the page cache
        while f.read(16 << 20):
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=int, default=2)
    parser.add_argument("--runtime-s", type=int, default=5)
    parser.add_argument("--image", type=Path, default=Path("/tmp/openevs-bench/nbd.img"))
    parser.add_argument("--peers", default="nbdkit,qemu-nbd")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure (median)")
    args = parser.parse_args()
    for tool in ["fio", *args.peers.split(",")]:
        if tool and shutil.which(tool) is None:
            print(f"missing {tool}", file=sys.stderr)
            return 2
    prepare(args.image, args.size_gib)
    servers = ["openevs", *[p for p in args.peers.split(",") if p]]
    ports = {server: free_port() for server in servers}
    results: dict[str, dict[str, float]] = {s: {} for s in servers}
    cpu: dict[str, dict[str, float]] = {s: {} for s in servers}
    pids: dict[str, int] = {}
    size = f"{args.size_gib}g"
    with contextlib.ExitStack() as stack:
        for server in servers:
            cmd = server_commands(args.image, ports[server], args.uvloop)[server]
            pids[server] = stack.enter_context(serving(cmd, ports[server]))
        # Jobs outer, servers inner, a sync before each run: no server inherits
        # another one's dirty pages (writeback throttling) or a warmer state.
        for label, rw, bs, depth in JOBS:
            for server in servers:
                runs = []
                for _ in range(args.repeat):
                    os.sync()
                    runs.append(run_fio(ports[server], pids[server], rw, bs, depth, size, args.runtime_s))
                figures = sorted(r[0] for r in runs)
                costs = sorted(r[1] for r in runs)
                results[server][label] = figures[len(figures) // 2]
                cpu[server][label] = costs[len(costs) // 2]
                print(f"  {server:9} {label:20} {runs}", file=sys.stderr)
    print_table(
        "Throughput (higher is better; ratio = openevs/peer)",
        JOBS,
        servers,
        results,
        lambda ours, theirs: ours / theirs if theirs else 0.0,
    )
    print()
    print_table(
        "Server CPU µs per request (lower is better; ratio = peer/openevs)",
        JOBS,
        servers,
        cpu,
        lambda ours, theirs: theirs / ours if ours else 0.0,
        units=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
