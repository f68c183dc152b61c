"""Snapshots on a real agent process, written and read by real NBD clients, checked by checksums.

Write A, snapshot, write B: the snapshot reads A, the disk B; a disk made
from the snapshot reads A, a clone reads B; a rollback brings A back; a
delete merges into the older snapshot and frees its space; everything
survives a SIGKILL of the agent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from openevs.contract import AgentRequestFailed, ErrorReason
from openevs.contract_snapshots import CopyRequest, JobProgress
from tests.integration.agent.support import AgentProcess
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("nbdcopy", "qemu-io")), reason="needs nbdcopy and qemu-io"
    ),
]

MiB = 1 << 20
SIZE = 16 * MiB


def run(*cmd: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done


def uri(agent: AgentProcess, name: str) -> str:
    return f"nbd://127.0.0.1:{agent.client.health().nbd_port}/{name}"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image(path: Path, seed: int, holes: bool = True) -> Path:
    """A SIZE image of random 64 KiB pieces (some left zero)."""
    rng = __import__("random").Random(seed)
    data = bytearray(SIZE)
    for start in range(0, SIZE, 64 * 1024):
        if not holes or rng.random() < 0.6:
            data[start : start + 64 * 1024] = rng.randbytes(64 * 1024)
    path.write_bytes(bytes(data))
    return path


def read_export(agent: AgentProcess, name: str, out: Path) -> str:
    out.unlink(missing_ok=True)
    run("nbdcopy", uri(agent, name), str(out))
    return sha(out)


def wait_job(call: object) -> JobProgress:
    assert callable(call)
    return wait_for("agent job", lambda: (p := call()).done and p)


@pytest.fixture
def disk(agent: AgentProcess, tmp_path: Path) -> Path:
    agent.client.create_volume("vol-a", SIZE)
    agent.client.grant_export("rw-a", "vol-a", False)
    a = image(tmp_path / "a.raw", 1)
    run("nbdcopy", str(a), uri(agent, "rw-a"))
    return a


def test_snapshot_reads_what_was_written_before_it(agent: AgentProcess, disk: Path, tmp_path: Path) -> None:
    client = agent.client
    info = client.create_snapshot("vol-a", "snap-1")
    assert info.size_bytes == SIZE and info.preserved_bytes == 0
    assert client.create_snapshot("vol-a", "snap-1") == info  # idempotent
    b = image(tmp_path / "b.raw", 2, holes=False)
    run("nbdcopy", str(b), uri(agent, "rw-a"))

    client.grant_snapshot_export("ro-snap-1", "vol-a", "snap-1")
    assert read_export(agent, "ro-snap-1", tmp_path / "s.raw") == sha(disk)
    assert read_export(agent, "rw-a", tmp_path / "d.raw") == sha(b)
    assert client.get_snapshot("vol-a", "snap-1").preserved_bytes > 0
    done = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4k", uri(agent, "ro-snap-1")],
        capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    assert read_export(agent, "ro-snap-1", tmp_path / "s.raw") == sha(disk), done.stdout

    # A disk from the snapshot reads A; a clone of the disk reads B.
    wait_job(lambda: client.copy_volume("vol-s", CopyRequest(source_volume_id="vol-a", snapshot_id="snap-1",
                                                           size_bytes=SIZE)))  # fmt: skip
    wait_job(lambda: client.copy_volume("vol-c", CopyRequest(source_volume_id="vol-a", size_bytes=2 * SIZE)))
    client.grant_export("ro-s", "vol-s", True)
    client.grant_export("ro-c", "vol-c", True)
    assert read_export(agent, "ro-s", tmp_path / "s2.raw") == sha(disk)
    clone = tmp_path / "c.raw"
    read_export(agent, "ro-c", clone)
    assert clone.stat().st_size == 2 * SIZE
    assert hashlib.sha256(clone.read_bytes()[:SIZE]).hexdigest() == sha(b)
    assert [s.snapshot_id for s in client.list_snapshots("vol-a")] == ["snap-1"]  # the clone's went

    # Rollback: the disk reads A again.
    wait_job(lambda: client.rollback_snapshot("vol-a", "snap-1"))
    assert read_export(agent, "rw-a", tmp_path / "d.raw") == sha(disk)


def test_delete_merges_into_the_older_snapshot_and_frees_space(
    agent: AgentProcess, disk: Path, tmp_path: Path
) -> None:
    client = agent.client
    client.create_snapshot("vol-a", "s1")
    b = image(tmp_path / "b.raw", 2, holes=False)
    run("nbdcopy", str(b), uri(agent, "rw-a"))
    client.create_snapshot("vol-a", "s2")
    c = image(tmp_path / "c.raw", 3, holes=False)
    run("nbdcopy", str(c), uri(agent, "rw-a"))
    client.grant_snapshot_export("ro-s1", "vol-a", "s1")
    chain = agent.pool / "snapshots" / "vol-a"
    used_before = sum(p.stat().st_blocks * 512 for p in chain.iterdir())
    s2_bytes = client.get_snapshot("vol-a", "s2").preserved_bytes
    assert s2_bytes >= SIZE - MiB  # every region was rewritten after s2

    wait_for("s2 deleted", lambda: client.delete_snapshot("vol-a", "s2").done)
    with pytest.raises(AgentRequestFailed) as err:
        client.get_snapshot("vol-a", "s2")
    assert err.value.reason is ErrorReason.NOT_FOUND
    used_after = sum(p.stat().st_blocks * 512 for p in chain.iterdir())
    assert used_before - used_after >= s2_bytes // 2  # what s1 already held is freed
    assert read_export(agent, "ro-s1", tmp_path / "s1.raw") == sha(disk)

    wait_for("s1 deleted", lambda: client.delete_snapshot("vol-a", "s1").done)
    assert not any(p.suffix == ".delta" for p in chain.iterdir())
    assert read_export(agent, "rw-a", tmp_path / "d.raw") == sha(c)


def test_snapshots_survive_a_sigkill(agent: AgentProcess, disk: Path, tmp_path: Path) -> None:
    client = agent.client
    client.create_snapshot("vol-a", "s1")
    b = image(tmp_path / "b.raw", 2, holes=False)
    run("nbdcopy", str(b), uri(agent, "rw-a"))
    agent.kill()
    agent.start()
    client.grant_snapshot_export("ro-s1", "vol-a", "s1")
    assert read_export(agent, "ro-s1", tmp_path / "s.raw") == sha(disk)
    assert read_export(agent, "rw-a", tmp_path / "d.raw") == sha(b)
    # A copy killed half-way leaves no volume; asked again, it completes.
    client.copy_volume("vol-s", CopyRequest(source_volume_id="vol-a", snapshot_id="s1", size_bytes=SIZE))
    agent.kill()
    agent.start()
    assert not (agent.pool / "vol-s.img").exists() or os.path.getsize(agent.pool / "vol-s.img") == SIZE
    wait_job(lambda: client.copy_volume("vol-s", CopyRequest(source_volume_id="vol-a", snapshot_id="s1",
                                                           size_bytes=SIZE)))  # fmt: skip
    client.grant_export("ro-s", "vol-s", True)
    assert read_export(agent, "ro-s", tmp_path / "s2.raw") == sha(disk)


def test_deleting_a_volume_removes_its_snapshots(agent: AgentProcess, disk: Path) -> None:
    client = agent.client
    client.create_snapshot("vol-a", "s1")
    client.delete_volume("vol-a")
    assert not (agent.pool / "snapshots" / "vol-a").exists()
    with pytest.raises(AgentRequestFailed) as err:
        client.create_snapshot("vol-a", "s2")
    assert err.value.reason is ErrorReason.NOT_FOUND
