"""Real OpenStack clients against the real `openevs serve`, configured only from
the clouds.yaml that serve wrote: openstacksdk (block storage and compute),
python-openstackclient as a subprocess, and unpinned version discovery.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import openstack
import pytest
import yaml
from openstack import exceptions as os_exc

from tests.e2e.conftest import ADMIN_PASSWORD, ServeProcess
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.e2e,
    # openstacksdk's own pending deprecations (its InfluxDB warning fires on every
    # connect, configured or not); its warnings about our API stay errors.
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

OPENSTACK_CLI = Path(sys.executable).with_name("openstack")


@pytest.fixture
def conn(shared_serve: ServeProcess, monkeypatch: pytest.MonkeyPatch) -> Any:
    """openstacksdk connection from OS_CLIENT_CONFIG_FILE + OS_CLOUD, nothing else."""
    for key, value in shared_serve.client_env().items():
        monkeypatch.setenv(key, value)
    connection = openstack.connect(cloud="openevs")
    yield connection
    connection.close()


def wait_volume(conn: Any, volume_id: str, pred: Any, what: str, timeout_s: float = 20) -> Any:
    return wait_for(
        f"volume {volume_id} {what}",
        lambda: (v := conn.block_storage.get_volume(volume_id)) and pred(v) and v,
        timeout_s,
    )


def wait_volume_gone(conn: Any, volume_id: str, timeout_s: float = 20) -> None:
    def gone() -> bool:
        try:
            conn.block_storage.get_volume(volume_id)
        except os_exc.NotFoundException:
            return True
        return False

    wait_for(f"volume {volume_id} to be gone", gone, timeout_s)


def test_serve_prints_and_writes_the_same_clouds_yaml(shared_serve: ServeProcess) -> None:
    """The same but for the password the operator chose: written (0600), never printed."""
    printed = shared_serve.printed_clouds_yaml(run=1)
    written = shared_serve.written_clouds_yaml()
    assert printed["clouds"]["openevs"]["auth"].pop("password") == "<the admin password>"
    written_password = written["clouds"]["openevs"]["auth"].pop("password")
    assert printed == written
    written["clouds"]["openevs"]["auth"]["password"] = written_password
    assert ADMIN_PASSWORD not in shared_serve.log_paths(1)[0].read_text()
    cloud = written["clouds"]["openevs"]
    assert cloud["auth"]["auth_url"] == f"{shared_serve.base}/v3"
    assert cloud["auth"]["password"] == ADMIN_PASSWORD
    assert shared_serve.clouds_yaml_path.stat().st_mode & 0o077 == 0


def test_openstacksdk_volume_lifecycle(conn: Any) -> None:
    name = f"sdk-{uuid.uuid4().hex[:8]}"
    volume = conn.block_storage.create_volume(size=1, availability_zone="az1.dc1", name=name)
    assert volume.status == "creating"
    volume = wait_volume(conn, volume.id, lambda v: v.status == "available", "available")
    assert (volume.size, volume.availability_zone, volume.name) == (1, "az1.dc1", name)

    listed = {v.id: v for v in conn.block_storage.volumes(details=True)}
    assert listed[volume.id].status == "available"
    assert volume.id in {v.id for v in conn.block_storage.volumes(details=False)}

    conn.block_storage.extend_volume(volume, 2)
    volume = wait_volume(
        conn, volume.id, lambda v: v.status == "available" and v.size == 2, "extended to 2 GB"
    )

    conn.block_storage.delete_volume(volume)
    wait_volume_gone(conn, volume.id)
    assert volume.id not in {v.id for v in conn.block_storage.volumes()}


def test_openstacksdk_compute_attach_detach(conn: Any) -> None:
    volume = conn.block_storage.create_volume(size=1, availability_zone="az1.dc1", name="disk")
    volume = wait_volume(conn, volume.id, lambda v: v.status == "available", "available")

    server = conn.compute.create_server(
        name=f"vm-{uuid.uuid4().hex[:8]}", availability_zone="az1.dc1",
        image_id="image-1", flavor_id="1", networks="none",
    )
    server = conn.compute.wait_for_server(server, status="ACTIVE", wait=20, interval=0.1)
    assert server.availability_zone == "az1.dc1"

    attachment = conn.compute.create_volume_attachment(server, volume_id=volume.id)
    assert attachment.volume_id == volume.id
    assert attachment.device.startswith("/dev/vd")
    volume = conn.block_storage.get_volume(volume.id)
    assert volume.status == "in-use"
    assert [a["server_id"] for a in volume.attachments] == [server.id]
    assert [a.volume_id for a in conn.compute.volume_attachments(server)] == [volume.id]
    server = conn.compute.get_server(server.id)
    assert [v["id"] for v in server.attached_volumes] == [volume.id]

    # An attached disk cannot be deleted.
    with pytest.raises(os_exc.BadRequestException):
        conn.block_storage.delete_volume(volume)

    conn.compute.stop_server(server)
    conn.compute.wait_for_server(server, status="SHUTOFF", wait=20, interval=0.1)
    conn.compute.start_server(server)
    conn.compute.wait_for_server(server, status="ACTIVE", wait=20, interval=0.1)

    conn.compute.delete_volume_attachment(server, volume.id)
    wait_volume(conn, volume.id, lambda v: v.status == "available" and not v.attachments,
                "detached")
    assert list(conn.compute.volume_attachments(server)) == []

    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, wait=20, interval=0.1)
    conn.block_storage.delete_volume(volume)
    wait_volume_gone(conn, volume.id)


def _osc(serve: ServeProcess, *args: str, config: Path | None = None) -> Any:
    result = subprocess.run(
        [str(OPENSTACK_CLI), *args], env=serve.client_env(config), capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 0, f"openstack {' '.join(args)}:\n{result.stderr}"
    return json.loads(result.stdout) if "-f" in args else result.stdout


def test_openstackclient_volume_commands(shared_serve: ServeProcess) -> None:
    name = f"osc-{uuid.uuid4().hex[:8]}"
    v2 = ("--os-volume-api-version", "2")
    created = _osc(shared_serve, *v2, "volume", "create", "--size", "1",
                   "--availability-zone", "az1.dc1", name, "-f", "json")
    assert created["name"] == name and created["size"] == 1
    volume_id = created["id"]

    session = shared_serve.login()
    wait_for(f"volume {volume_id} available",
             lambda: session.get(f"/v2/{{p}}/volumes/{volume_id}").json()["volume"]["status"]
             == "available")

    listed = _osc(shared_serve, *v2, "volume", "list", "-f", "json")
    assert {"ID": volume_id, "Name": name, "Status": "available"}.items() <= next(
        row for row in listed if row["ID"] == volume_id
    ).items()

    shown = _osc(shared_serve, *v2, "volume", "show", name, "-f", "json")
    assert (shown["id"], shown["status"], shown["availability_zone"]) == (
        volume_id, "available", "az1.dc1")

    _osc(shared_serve, *v2, "volume", "delete", volume_id)
    wait_for(f"volume {volume_id} gone",
             lambda: session.get(f"/v2/{{p}}/volumes/{volume_id}").status_code == 404)
    session.client.close()


@pytest.fixture
def unpinned_clouds_yaml(shared_serve: ServeProcess, tmp_path: Path) -> Path:
    """serve's clouds.yaml without any *_api_version key: clients must discover."""
    config = shared_serve.written_clouds_yaml()
    cloud = config["clouds"]["openevs"]
    for key in [k for k in cloud if k.endswith("_api_version")]:
        del cloud[key]
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_openstacksdk_discovers_v2_when_unpinned(
    shared_serve: ServeProcess, unpinned_clouds_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in shared_serve.client_env(unpinned_clouds_yaml).items():
        monkeypatch.setenv(key, value)
    conn = openstack.connect(cloud="openevs")
    try:
        endpoint = conn.block_storage.get_endpoint()
        assert "/v2/" in endpoint, endpoint
        volume = conn.block_storage.create_volume(size=1, availability_zone="az2.dc2")
        volume = wait_volume(conn, volume.id, lambda v: v.status == "available", "available")
        assert volume.id in {v.id for v in conn.block_storage.volumes()}
        conn.block_storage.delete_volume(volume)
        wait_volume_gone(conn, volume.id)
        assert isinstance(list(conn.compute.servers()), list)
    finally:
        conn.close()


def test_openstackclient_takes_the_volume_version_from_clouds_yaml(
    shared_serve: ServeProcess,
) -> None:
    # python-openstackclient defaults to volume API 3 and does not fall back
    # to a discovered v2 ("Service requires API version '3'"), so the
    # volume_api_version key serve writes is what makes plain commands work.
    listed = _osc(shared_serve, "volume", "list", "-f", "json")
    assert isinstance(listed, list)
