"""Third-party NBD clients against our server: nbdinfo, nbdcopy, qemu-img, qemu-io,
fio (nbd engine) and python3-libnbd (Debian's /usr/bin/python3 only)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from openevs.agent.nbd.export import FileExport

from .conftest import ServerThread, sparse_file

pytestmark = pytest.mark.interop

GIB = 1 << 30
MIB = 1 << 20


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package {package}; .ci/run installs it)")
    return path


def run(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args[0]} failed: {done.stdout}\n{done.stderr}"
    return done.stdout


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def source_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB: 16 random 8 MiB extents scattered over holes."""
    path = sparse_file(tmp_path_factory.mktemp("src") / "src.img", GIB)
    with open(path, "r+b") as f:
        for i in range(16):
            f.seek(i * 64 * MIB + (i % 3) * MIB)
            f.write(os.urandom(8 * MIB))
    return path


@pytest.fixture
def target(nbd_server: ServerThread, tmp_path: Path) -> tuple[str, Path]:
    path = sparse_file(tmp_path / "target.img", GIB)
    name = "att-" + os.urandom(8).hex()
    nbd_server.exports[name] = FileExport(path)
    return name, path


def test_nbdinfo_size_map_and_list(nbd_server: ServerThread, target: tuple[str, Path]) -> None:
    nbdinfo = need("nbdinfo", "libnbd-bin")
    name, path = target
    with open(path, "r+b") as f:
        f.seek(2 * MIB)
        f.write(b"x" * MIB)
    info = json.loads(run(nbdinfo, "--json", nbd_server.uri(name)))
    export = info["exports"][0]
    assert export["export-size"] == GIB
    assert export["can_multi_conn"] and export["can_flush"] and export["can_fua"]
    assert export["block_size_maximum"] == 32 * MIB
    assert "base:allocation" in export["contexts"]
    extents = json.loads(run(nbdinfo, "--map", "--json", nbd_server.uri(name)))
    assert [(e["offset"], e["length"], e["type"]) for e in extents] == [
        (0, 2 * MIB, 3),
        (2 * MIB, MIB, 0),
        (3 * MIB, GIB - 3 * MIB, 3),
    ]
    listing = run(nbdinfo, "--list", "--json", nbd_server.uri(name))
    assert json.loads(listing)["exports"] == []
    assert name not in listing


def test_nbdinfo_unknown_export_fails(nbd_server: ServerThread, target: tuple[str, Path]) -> None:
    nbdinfo = need("nbdinfo", "libnbd-bin")
    done = subprocess.run([nbdinfo, nbd_server.uri("nope")], capture_output=True, timeout=30, check=False)
    assert done.returncode != 0


def test_nbdcopy_round_trip_1gib(
    nbd_server: ServerThread, target: tuple[str, Path], source_image: Path, tmp_path: Path
) -> None:
    nbdcopy = need("nbdcopy", "libnbd-bin")
    name, path = target
    run(nbdcopy, str(source_image), nbd_server.uri(name), timeout=120)
    back = tmp_path / "back.img"
    run(nbdcopy, nbd_server.uri(name), str(back), timeout=120)
    assert sha256(back) == sha256(source_image) == sha256(path)


def test_qemu_img_convert_round_trip_1gib(
    nbd_server: ServerThread, target: tuple[str, Path], source_image: Path, tmp_path: Path
) -> None:
    qemu_img = need("qemu-img", "qemu-utils")
    name, _ = target
    uri = nbd_server.uri(name)
    run(qemu_img, "convert", "-n", "-f", "raw", "-O", "raw", str(source_image), uri, timeout=120)
    back = tmp_path / "back.img"
    run(qemu_img, "convert", "-f", "raw", "-O", "raw", uri, str(back), timeout=120)
    assert sha256(back) == sha256(source_image)
    run(qemu_img, "compare", "-f", "raw", "-F", "raw", str(source_image), uri, timeout=120)


def test_qemu_io_pattern(nbd_server: ServerThread, target: tuple[str, Path]) -> None:
    qemu_io = need("qemu-io", "qemu-utils")
    name, path = target
    uri = nbd_server.uri(name)
    out = run(
        qemu_io, "-f", "raw", "-c", "write -P 0xab 1M 64k", "-c", "read -P 0xab 1M 64k", "-c", "flush", uri
    )
    assert "Pattern verification failed" not in out
    out = run(qemu_io, "-f", "raw", "-c", "read -P 0xab 1M 64k", "-c", "read -P 0 0 1M", uri)
    assert "Pattern verification failed" not in out
    with open(path, "rb") as f:
        f.seek(MIB)
        assert f.read(64 * 1024) == b"\xab" * 64 * 1024


def test_fio_nbd_engine_with_verify(nbd_server: ServerThread, target: tuple[str, Path]) -> None:
    fio = need("fio", "fio")
    name, _ = target
    out = run(
        fio,
        "--name=interop",
        "--ioengine=nbd",
        f"--uri={nbd_server.uri(name)}",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=32m",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_state_save=0",
        "--output-format=json",
        timeout=120,
    )
    job = json.loads(out[out.index("{") :])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] == 32 * MIB and job["read"]["io_bytes"] == 32 * MIB


LIBNBD_SCRIPT = """
import sys, nbd
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
assert h.get_size() == 1 << 30
assert h.can_multi_conn() and h.can_fua() and h.can_trim() and h.can_zero()
h.pwrite(b"L" * 4096, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 8192) == b"L" * 4096
seen = []
h.block_status(1 << 20, 0, lambda ctx, off, ents, err: seen.append((ctx, list(ents))))
assert seen[0][0] == "base:allocation", seen
assert seen[0][1][:2] == [8192, 3] and seen[0][1][2:4] == [4096, 0], seen
h.zero(4096, 8192)
assert h.pread(4096, 8192) == bytes(4096)
h.flush()
h.shutdown()
print("ok")
"""


def test_python_libnbd(nbd_server: ServerThread, target: tuple[str, Path]) -> None:
    python = "/usr/bin/python3"
    if (
        not os.path.exists(python)
        or subprocess.run([python, "-c", "import nbd"], capture_output=True, check=False).returncode
    ):
        pytest.skip("python3-libnbd is not installed for /usr/bin/python3")
    name, _ = target
    assert run(python, "-c", LIBNBD_SCRIPT, nbd_server.uri(name)).strip() == "ok"
