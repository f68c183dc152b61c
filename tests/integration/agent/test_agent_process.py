"""A real agent process on a unix socket, driven by HttpAgentClient; the supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from openevs.agent.client import HttpAgentClient
from openevs.agent.grants import export_digest
from openevs.agent.supervisor import AgentSupervisor
from openevs.config import Settings
from openevs.contract import AgentRequestFailed, AgentUnavailable, VolumeInfo
from tests.integration.agent.support import AgentProcess, alive
from tests.support.waiting import wait_for

GiB = 1 << 30


def test_health(agent: AgentProcess) -> None:
    health = agent.client.health()
    assert health.az == "az1.dc1"
    assert health.nbd_host == "127.0.0.1"
    assert health.volume_count == 0
    assert 0 < health.free_bytes <= health.capacity_bytes
    assert len(health.boot_id) >= 16


def test_volume_lifecycle(agent: AgentProcess) -> None:
    client = agent.client
    fresh = VolumeInfo(volume_id="vol-1", size_bytes=GiB, allocated_bytes=0)
    assert client.create_volume("vol-1", GiB) == fresh
    assert client.create_volume("vol-1", GiB) == fresh
    with pytest.raises(AgentRequestFailed) as exc:
        client.create_volume("vol-1", 2 * GiB)
    assert (exc.value.status, exc.value.reason) == (409, "conflict")

    assert client.grow_volume("vol-1", 4 * GiB).size_bytes == 4 * GiB
    assert client.grow_volume("vol-1", 4 * GiB).size_bytes == 4 * GiB
    with pytest.raises(AgentRequestFailed) as exc:
        client.grow_volume("vol-1", GiB)
    assert (exc.value.status, exc.value.reason) == (400, "invalid_input")
    assert "shrink" in str(exc.value)

    client.create_volume("vol-2", 1 << 40)
    assert [(v.volume_id, v.size_bytes) for v in client.list_volumes()] == [
        ("vol-1", 4 * GiB),
        ("vol-2", 1 << 40),
    ]
    assert client.health().volume_count == 2
    assert client.get_volume("vol-2").allocated_bytes == 0

    client.delete_volume("vol-1")
    client.delete_volume("vol-1")
    with pytest.raises(AgentRequestFailed) as exc:
        client.get_volume("vol-1")
    assert (exc.value.status, exc.value.reason) == (404, "not_found")
    assert not (agent.pool / "vol-1.img").exists()


@pytest.mark.parametrize(
    ("volume_id", "size"), [("a.b", GiB), ("vol", 0), ("vol", 1000), ("vol", 1 << 60)]
)
def test_bad_requests_are_4xx(agent: AgentProcess, volume_id: str, size: int) -> None:
    with pytest.raises(AgentRequestFailed) as exc:
        agent.client.create_volume(volume_id, size)
    assert (exc.value.status, exc.value.reason) == (400, "invalid_input")
    with pytest.raises(AgentRequestFailed) as exc:
        agent.client.grow_volume("missing", GiB)
    assert exc.value.status == 404


def test_exports_survive_restart(agent: AgentProcess) -> None:
    client = agent.client
    client.create_volume("vol-1", GiB)
    client.create_volume("vol-2", GiB)
    client.grant_export("att-1", "vol-1", False)
    client.grant_export("att-2", "vol-1", True)
    client.grant_export("att-3", "vol-2", False)
    client.grant_export("att-3", "vol-2", False)
    with pytest.raises(AgentRequestFailed) as exc:
        client.grant_export("att-4", "missing", False)
    assert exc.value.status == 404
    boot_id = client.health().boot_id

    assert agent.stop() == 0
    assert not agent.sock.exists()
    with pytest.raises(AgentUnavailable):
        client.health()

    agent.start()
    assert client.health().boot_id != boot_id
    # the names are secrets the agent keeps on disk only as digests (grants.py)
    assert sorted((e.name, e.volume_id, e.read_only) for e in client.list_exports()) == sorted([
        (export_digest("att-1"), "vol-1", False),
        (export_digest("att-2"), "vol-1", True),
        (export_digest("att-3"), "vol-2", False),
    ])  # fmt: skip
    assert "att-" not in (agent.pool / "exports.json").read_text()
    client.revoke_export("att-3")
    client.revoke_export("att-3")
    client.delete_volume("vol-1")  # drops its grants
    assert client.list_exports() == []
    assert [v.volume_id for v in client.list_volumes()] == ["vol-2"]


def test_the_same_grant_again_changes_nothing_and_a_deleted_volume_has_none(agent: AgentProcess) -> None:
    """A grant the agent holds already answers without rewriting its table (a client
    polling os-initialize_connection); a changed one is saved; once the volume is
    deleted its grants are gone, so granting again finds no volume (404)."""
    client = agent.client
    client.create_volume("vol-1", GiB)
    client.grant_export("att-1", "vol-1", True)
    table = agent.pool / "exports.json"
    before = table.stat()
    for _ in range(3):
        client.grant_export("att-1", "vol-1", True)
    after = table.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    client.grant_export("att-1", "vol-1", False)  # changed: saved
    assert table.stat().st_ino != before.st_ino
    assert [(e.volume_id, e.read_only) for e in client.list_exports()] == [("vol-1", False)]
    client.delete_volume("vol-1")
    with pytest.raises(AgentRequestFailed) as exc:
        client.grant_export("att-1", "vol-1", False)
    assert exc.value.status == 404


def test_unreachable_agent(short_dir: Path) -> None:
    client = HttpAgentClient("az1.dc1", f"unix:{short_dir}/none.sock", timeout_s=1)
    with pytest.raises(AgentUnavailable):
        client.health()
    with pytest.raises(AgentUnavailable):
        HttpAgentClient("az1.dc1", "http://127.0.0.1:9", timeout_s=1).create_volume("v", GiB)


def _settings(data_dir: Path, **extra: object) -> Settings:
    return Settings(data_dir=data_dir, azs=("az1.dc1", "az2.dc2"), nbd_port_base=0, **extra)  # type: ignore[arg-type]


def test_supervisor_restarts_crashed_agent_and_kills_stale_one(
    short_dir: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    settings = _settings(short_dir)
    # An agent left over from a previous run, with its pid file.
    stale = agent_factory(
        "az1.dc1",
        pool=settings.pool_dir("az1.dc1").resolve(),
        sock=short_dir / "stale.sock",
    )
    settings.agent_dir().mkdir(parents=True)
    stale.start()
    assert stale.proc is not None
    (settings.agent_dir() / "az1.dc1.pid").write_text(f"{stale.proc.pid}\n")

    supervisor = AgentSupervisor(settings)
    try:
        supervisor.start()
        assert stale.proc.poll() is not None, "stale agent still running"
        ready = supervisor.wait_ready(15)
        assert sorted(ready) == ["az1.dc1", "az2.dc2"]
        assert ready["az2.dc2"].az == "az2.dc2"

        pid = supervisor.pid("az1.dc1")
        assert pid is not None
        assert (settings.agent_dir() / "az1.dc1.pid").read_text().strip() == str(pid)
        client = supervisor.client_for("az1.dc1")
        client.create_volume("vol-1", GiB)
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            new_pid = supervisor.pid("az1.dc1")
            return (
                new_pid not in (None, pid) and client.health().boot_id != ready["az1.dc1"].boot_id
            )

        wait_for("agent restart", restarted)
        assert supervisor.restarts("az1.dc1") == 1
        assert [v.volume_id for v in client.list_volumes()] == ["vol-1"]
        assert (settings.agent_dir() / "az1.dc1.log").stat().st_size > 0
        pids = [supervisor.pid(az) for az in ("az1.dc1", "az2.dc2")]
    finally:
        supervisor.stop()
    assert all(p is not None and not alive(p) for p in pids)
    assert not (settings.agent_dir() / "az1.dc1.pid").exists()


def test_supervisor_client_for_standalone_agent(short_dir: Path) -> None:
    settings = _settings(short_dir, agent_urls={"az2.dc2": "http://127.0.0.1:9"})
    supervisor = AgentSupervisor(settings)
    assert supervisor.client_for("az2.dc2").url == "http://127.0.0.1:9"
    assert supervisor.client_for("az1.dc1").url.startswith("unix:")
    with pytest.raises(KeyError):
        supervisor.client_for("az9")
    supervisor.stop()


def test_agents_die_with_a_killed_serve(short_dir: Path) -> None:
    script = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from openevs.agent.supervisor import AgentSupervisor\n"
        "from openevs.config import Settings\n"
        "s = AgentSupervisor(Settings(data_dir=Path(sys.argv[1]), azs=('az1.dc1',),"
        " nbd_port_base=0))\n"
        "s.start(); s.wait_ready(15); print('ready', flush=True)\n"
        "threading.Event().wait()\n"
    )
    serve = subprocess.Popen([sys.executable, "-c", script, str(short_dir)], stdout=subprocess.PIPE)
    try:
        assert serve.stdout is not None
        assert serve.stdout.readline().strip() == b"ready"
        pid = int((short_dir / "agents" / "az1.dc1.pid").read_text())
        assert alive(pid)
        serve.kill()
        serve.wait()
        wait_for("agent to die with serve", lambda: not alive(pid))
    finally:
        serve.kill()
        serve.wait()


def test_supervisor_with_a_data_dir_too_long_for_a_unix_socket(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 100)
    settings = Settings(data_dir=data_dir, azs=("az1.dc1",), nbd_port_base=0)
    supervisor = AgentSupervisor(settings)
    try:
        supervisor.start()
        assert supervisor.wait_ready(15)["az1.dc1"].az == "az1.dc1"
        assert len(supervisor.client_for("az1.dc1").url) <= 112
    finally:
        supervisor.stop()
