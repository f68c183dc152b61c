"""A real agent serving its granted exports to real NBD clients (qemu-io, nbdinfo, nbdsh)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.integration.agent.support import AgentProcess

# libnbd's Python binding comes with the distribution's python, not the venv.
SYSTEM_PYTHON = "/usr/bin/python3"


def _have_libnbd_python() -> bool:
    try:
        return run(SYSTEM_PYTHON, "-c", "import nbd").returncode == 0
    except OSError:
        return False


def run(*cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, capture_output=True, timeout=20, check=False)


pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("qemu-io", "nbdinfo")) or not _have_libnbd_python(),
        reason="needs qemu-io, nbdinfo and libnbd's python binding",
    ),
]

MiB = 1 << 20


def uri(agent: AgentProcess, name: str) -> str:
    return f"nbd://127.0.0.1:{agent.client.health().nbd_port}/{name}"


def test_granted_export_is_served_and_revoked(agent: AgentProcess) -> None:
    client = agent.client
    assert client.health().nbd_port > 0
    client.create_volume("vol-1", 8 * MiB)
    client.grant_export("att-rw", "vol-1", False)
    client.grant_export("att-ro", "vol-1", True)

    done = run("qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 64k", uri(agent, "att-rw"))
    assert done.returncode == 0, done.stderr
    with (agent.pool / "vol-1.img").open("rb") as fh:
        fh.seek(MiB)
        assert fh.read(64 * 1024) == b"\xab" * 64 * 1024

    info = json.loads(run("nbdinfo", "--json", uri(agent, "att-ro")).stdout)
    assert info["exports"][0]["is_read_only"] is True
    assert info["exports"][0]["export-size"] == 8 * MiB
    done = run("qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 4k", uri(agent, "att-ro"))
    with (agent.pool / "vol-1.img").open("rb") as fh:
        assert fh.read(4096) == bytes(4096), done.stdout

    client.grow_volume("vol-1", 16 * MiB)
    assert run("nbdinfo", "--size", uri(agent, "att-rw")).stdout.strip() == b"16777216"
    assert run("nbdinfo", "--size", uri(agent, "nope")).returncode != 0

    # An open connection is closed when its grant is revoked.
    script = (
        "import sys, nbd\n"
        "h = nbd.NBD()\n"
        "h.connect_uri(sys.argv[1])\n"
        "h.pread(512, 0)\n"
        "print('connected', flush=True)\n"
        "sys.stdin.readline()\n"
        "try:\n"
        "    h.pread(512, 0)\n"
        "    print('still-connected', flush=True)\n"
        "except nbd.Error:\n"
        "    print('dropped', flush=True)\n"
    )
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", script, uri(agent, "att-rw")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == b"connected"
        client.revoke_export("att-rw")
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == b"dropped"
    finally:
        proc.kill()
        proc.wait()
    assert run("nbdinfo", "--size", uri(agent, "att-rw")).returncode != 0

    client.delete_volume("vol-1")
    assert run("nbdinfo", "--size", uri(agent, "att-ro")).returncode != 0
    assert client.list_exports() == []
