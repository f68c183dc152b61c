"""The cost of TLS on NBD, as TLS/plaintext ratios measured in the same run.

    .venv/bin/python bench/tls.py [--size-gib 1] [--runtime-s 5] [--repeat 3] [--fio-s 8]
                                  [--rounds 2] [--link-only]

(a) fio (ioengine=nbd) 1 MiB sequential writes (qd 8) and 4 KiB random reads
    (qd 16) against one image in the page cache, served in clear text and with
    TLS required by the openevs server (`python -m openevs.agent.nbd
    --tls-cert/--tls-key`) and, as the peer, by nbdkit (`--tls=require`).
    fio's nbd engine is libnbd: it speaks `nbds://`, but refuses
    `?tls-certificates=` in a URI, so the CA bundle is given the way libnbd
    finds it by default, as `$HOME/.pki/libnbd/ca-cert.pem` (HOME is a
    temporary directory for fio only).
(b) replicated 1 MiB sequential writes (fio, qd 8, clear text to the
    primary's loopback user export) on an active pair of two agent
    processes, with the replication link in clear text (no PKI) and
    encrypted (both agents with `--pki`: mutual TLS, peer checked as
    agent:<az>).

Figures are medians of `--repeat` runs (a) or the best of `--rounds` (b);
ratios are TLS/plain, 1.00 meaning free. The server CPU µs per request
(a) shows where the time goes, independent of the machine's other load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nbd import free_port, prepare, run_fio, serving  # noqa: E402
from replication import cpu_s, fio_write  # noqa: E402
from tests.integration.mirror.support import PairedAgent  # noqa: E402

from openevs.contract import Peer, ReplicationRequest
from openevs.domain.replication import Role  # noqa: E402
from openevs.security import pki  # noqa: E402
from openevs.security.identity import CertRole, Identity  # noqa: E402

MiB = 1 << 20
JOBS = [("seq write 1M qd8", "write", "1m", 8), ("rand read 4k qd16", "randread", "4k", 16)]
AZS = ("az1.dc1", "az2.dc2")


def make_pki(root: Path) -> Path:
    pki_dir = root / "pki"
    pki.init_ca(pki_dir)
    for az in AZS:
        pki.issue(pki_dir, Identity(CertRole.AGENT, az), ip_addresses=["127.0.0.1"])
    return pki_dir


def gnutls_dir(target: Path, pki_dir: Path, endpoint: str | None) -> Path:
    target.mkdir(parents=True)
    (target / "ca-cert.pem").symlink_to(pki_dir / "ca.pem")
    if endpoint is not None:
        files = pki.files_for(pki_dir, f"agent-{AZS[0]}")
        (target / f"{endpoint}-cert.pem").symlink_to(files.cert)
        (target / f"{endpoint}-key.pem").symlink_to(files.key)
    return target


def servers(image: Path, pki_dir: Path, root: Path) -> dict[str, tuple[list[str], int, str]]:
    """name -> (command, port, fio URI)."""
    files = pki.files_for(pki_dir, f"agent-{AZS[0]}")
    nbdkit_dir = gnutls_dir(root / "nbdkit-tls", pki_dir, "server")
    table: dict[str, tuple[list[str], int, str]] = {}
    for name in ("openevs plain", "openevs tls", "nbdkit plain", "nbdkit tls"):
        port = free_port()
        tls = name.endswith("tls")
        if name.startswith("openevs"):
            cmd = [sys.executable, "-m", "openevs.agent.nbd", str(image), "--port", str(port)]
            cmd += ["--tls-cert", str(files.cert), "--tls-key", str(files.key)] if tls else []
        else:
            cmd = ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port)]
            cmd += ["--tls=require", f"--tls-certificates={nbdkit_dir}"] if tls else []
            cmd += ["file", f"file={image}"]
        table[name] = (cmd, port, f"{'nbds' if tls else 'nbd'}://127.0.0.1:{port}/")
    return table


def bench_fio(args: argparse.Namespace, root: Path, pki_dir: Path) -> None:
    image = root / "img" / "bench.img"
    prepare(image, args.size_gib)
    home = root / "fio-home"
    gnutls_dir(home / ".pki" / "libnbd", pki_dir, None)
    env = {**os.environ, "HOME": str(home)}
    table = servers(image, pki_dir, root)
    results: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in table}
    with contextlib.ExitStack() as stack:
        pids = {name: stack.enter_context(serving(cmd, port)) for name, (cmd, port, _uri) in table.items()}
        for label, rw, bs, depth in JOBS:
            for name, (_cmd, port, uri) in table.items():
                runs = []
                for _ in range(args.repeat):
                    os.sync()
                    runs.append(run_fio(port, pids[name], rw, bs, depth, f"{args.size_gib}g",
                                        args.runtime_s, uri=uri, env=env))  # fmt: skip
                results[name][label] = (
                    statistics.median(r[0] for r in runs),
                    statistics.median(r[1] for r in runs),
                )
                print(f"  {name:14} {label:18} {[round(r[0]) for r in runs]}", file=sys.stderr)
    print("(a) fio over NBD: plain vs TLS (MiB/s for 1M, IOPS for 4k; CPU = server µs per request)")
    print(f"| {'server':8} | {'job':18} | {'plain':>8} | {'TLS':>8} | {'TLS/plain':>9} | "
          f"{'CPU plain':>9} | {'CPU TLS':>8} |")  # fmt: skip
    print(f"|{'-' * 10}|{'-' * 20}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    for server in ("openevs", "nbdkit"):
        for label, *_ in JOBS:
            (plain, cpu_plain), (tls, cpu_tls) = (
                results[f"{server} plain"][label],
                results[f"{server} tls"][label],
            )
            print(f"| {server:8} | {label:18} | {plain:8.0f} | {tls:8.0f} | {tls / plain:9.2f} | "
                  f"{cpu_plain:9.1f} | {cpu_tls:8.1f} |")  # fmt: skip


class BenchAgent(PairedAgent):
    def __init__(self, root: Path, az: str, pki_dir: Path | None) -> None:
        super().__init__(root, az)
        self.pki_dir = pki_dir

    def command(self) -> list[str]:
        extra = ["--pki", str(self.pki_dir)] if self.pki_dir is not None else []
        return [*super().command(), *extra]


def replicated_write(root: Path, pki_dir: Path | None, args: argparse.Namespace) -> tuple[float, float]:
    """(MiB/s, agents' CPU s per GiB) of fio 1 MiB writes on an active pair."""
    size = 2 << 30  # fio_write writes FIO_SIZE (2 GiB)
    a, b = BenchAgent(root / "a", AZS[0], pki_dir), BenchAgent(root / "b", AZS[1], pki_dir)
    try:
        a.start()
        b.start()
        a.client.create_volume("vol", size)
        b.client.create_volume("dr", size)
        a.client.grant_export("att", "vol", False)
        b.client.set_replication(
            "dr", ReplicationRequest(role=Role.SECONDARY, epoch=1, pair_id="bench", link_export="link-b"),
        )  # fmt: skip
        peer = Peer(host="127.0.0.1", port=b.nbd_port, export="link-b", az=b.az)
        a.client.set_replication(
            "vol", ReplicationRequest(role=Role.PRIMARY, epoch=1, pair_id="bench", peer=peer),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while a.state("vol").replication_status != "active":
            if time.monotonic() > deadline:
                raise SystemExit(f"the pair did not become active: {a.state('vol')}")
            time.sleep(0.05)
        fio_write(a, "att", None)  # allocate the blocks once: the timed runs overwrite
        assert a.proc is not None and b.proc is not None
        best, best_cpu = 0.0, 0.0
        for _ in range(args.rounds):
            os.sync()
            before = cpu_s(a.proc.pid, b.proc.pid)
            mib_s = fio_write(a, "att", args.fio_s)
            cpu = (cpu_s(a.proc.pid, b.proc.pid) - before) / (mib_s * args.fio_s / 1024)
            if mib_s > best:
                best, best_cpu = mib_s, cpu
        state = a.state("vol")
        assert state.replication_status == "active" and state.link_up, state
        return best, best_cpu
    finally:
        for agent in (a, b):
            agent.kill()
            agent.client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--runtime-s", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fio-s", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--link-only", action="store_true", help="only (b), the replication link")
    args = parser.parse_args()
    for tool in ("fio", "nbdkit"):
        if shutil.which(tool) is None:
            print(f"missing {tool}", file=sys.stderr)
            return 2
    root = Path(tempfile.mkdtemp(prefix="oevs-tls-"))
    try:
        pki_dir = make_pki(root)
        if not args.link_only:
            bench_fio(args, root, pki_dir)
        plain, plain_cpu = replicated_write(root / "plain", None, args)
        tls, tls_cpu = replicated_write(root / "tls", pki_dir, args)
        print()
        print("(b) replicated fio 1 MiB seq write (qd 8) on an active pair")
        print(f"link plain {plain:.0f} MiB/s, link TLS {tls:.0f} MiB/s, TLS/plain {tls / plain:.2f}; "
              f"agents' CPU s per GiB: plain {plain_cpu:.2f}, TLS {tls_cpu:.2f}")  # fmt: skip
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
