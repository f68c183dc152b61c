"""A clean restart of `openevs serve` (SIGTERM, then start on the same data dir
and database) keeps every resource: volumes, servers, attachments, users and
projects, and the pool files; on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import AZS, ServeProcess, Session, pid_alive
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ALICE_PASSWORD = "alice-password-1"


def create_volume(session: Session, az: str, size: int = 1, name: str = "") -> str:
    r = session.post("/v2/{p}/volumes", {"volume": {"size": size, "availability_zone": az,
                                                    "name": name}})
    assert r.status_code == 202, r.text
    return str(r.json()["volume"]["id"])


def volume(session: Session, volume_id: str) -> dict[str, Any]:
    r = session.get(f"/v2/{{p}}/volumes/{volume_id}")
    assert r.status_code == 200, r.text
    return dict(r.json()["volume"])


def wait_status(session: Session, volume_id: str, status: str, size: int | None = None) -> None:
    wait_for(
        f"volume {volume_id} {status}",
        lambda: (v := volume(session, volume_id))["status"] == status
        and (size is None or v["size"] == size),
    )


def snapshot(session: Session) -> dict[str, Any]:
    """What a client can see, minus fields that legitimately change on restart."""
    volumes = {
        v["id"]: (v["name"], v["status"], v["size"], v["availability_zone"], v["volume_type"],
                  sorted((a["server_id"], a["device"]) for a in v["attachments"]))
        for v in session.volumes()
    }
    servers = {
        s["id"]: (s["name"], s["status"], s["OS-EXT-AZ:availability_zone"],
                  sorted(a["id"] for a in s["os-extended-volumes:volumes_attached"]))
        for s in session.servers()
    }
    return {"volumes": volumes, "servers": servers}


def nbd_greeting(host: str, port: int) -> bytes:
    """The first 16 bytes an NBD server sends: NBDMAGIC + IHAVEOPT (newstyle)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        data = b""
        while len(data) < 16:
            chunk = sock.recv(16 - len(data))
            if not chunk:
                break
            data += chunk
    return data


def check_generated_password(serve: ServeProcess) -> str:
    """serve printed the generated password once, in its clouds.yaml too, and wrote that file."""
    stdout = serve.log_paths()[0].read_text()
    match = re.search(r"admin password \(generated, shown once\): (\S+)", stdout)
    assert match, stdout
    written = serve.written_clouds_yaml()
    assert serve.printed_clouds_yaml() == written
    assert written["clouds"]["openevs"]["auth"]["password"] == match.group(1)
    return match.group(1)


# SQLite runs with a generated admin password, PostgreSQL with OPENEVS_ADMIN_PASSWORD.
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_restart_keeps_every_resource(
    db: str, serve_factory: Callable[..., ServeProcess], request: pytest.FixtureRequest
) -> None:
    if db == "postgresql":
        serve = serve_factory(database_url=request.getfixturevalue("pg_database_url"))
    else:
        serve = serve_factory(admin_password=None)
    serve.start()
    password = check_generated_password(serve) if serve.admin_password is None else None
    clouds_yaml = serve.written_clouds_yaml()

    serve.admin_cli("project", "create", "tenant-b")
    serve.admin_cli("user", "create", "alice", "--password", ALICE_PASSWORD,
                    "--project", "tenant-b", "--role", "member")

    admin = serve.login()
    alice = serve.login("alice", ALICE_PASSWORD, "tenant-b")
    assert alice.project_id != admin.project_id

    attached = create_volume(admin, "az1.dc1", name="attached")
    grown = create_volume(admin, "az2.dc2", name="grown")
    alices = create_volume(alice, "az3.dc3", name="alices")
    for session, vid in ((admin, attached), (admin, grown), (alice, alices)):
        wait_status(session, vid, "available")
    r = admin.post(f"/v2/{{p}}/volumes/{grown}/action", {"os-extend": {"new_size": 3}})
    assert r.status_code == 202, r.text
    wait_status(admin, grown, "available", size=3)

    r = admin.post("/v2.1/{p}/servers", {"server": {"name": "vm1", "availability_zone": "az1.dc1",
                                                    "imageRef": "img", "flavorRef": "1"}})
    assert r.status_code == 202, r.text
    server_id = r.json()["server"]["id"]
    r = admin.post(f"/v2.1/{{p}}/servers/{server_id}/os-volume_attachments",
                   {"volumeAttachment": {"volumeId": attached}})
    assert r.status_code == 200, r.text
    r = admin.post(f"/v2.1/{{p}}/servers/{server_id}/action", {"os-stop": None})
    assert r.status_code == 202, r.text

    before = {"admin": snapshot(admin), "alice": snapshot(alice)}
    assert before["admin"]["volumes"][attached][1] == "in-use"
    assert before["admin"]["servers"][server_id][1] == "SHUTOFF"
    files_before = serve.pool_files()
    agents_before = serve.agent_pids()
    admin.client.close()
    alice.client.close()

    assert serve.stop() == 0, serve.logs()
    for az, pid in agents_before.items():
        wait_for(f"agent of {az} (pid {pid}) to exit with serve", lambda p=pid: not pid_alive(p), 10)
    assert serve.agent_pids() == {}, "a clean stop removes the agents' pid files"

    serve.start()
    # The clouds.yaml written at first start still holds; a generated password
    # is never shown again.
    assert serve.written_clouds_yaml() == clouds_yaml
    if password is not None:
        assert password not in serve.log_paths()[0].read_text()
    admin = serve.login()
    alice = serve.login("alice", ALICE_PASSWORD, "tenant-b")
    assert {"admin": snapshot(admin), "alice": snapshot(alice)} == before
    assert serve.pool_files() == files_before
    assert serve.agent_pids().keys() == set(AZS)
    assert not set(serve.agent_pids().values()) & set(agents_before.values())

    # The attachment still works: a connection is granted on the new agent,
    # and its NBD server answers there.
    r = admin.post(f"/v2/{{p}}/volumes/{attached}/action",
                   {"os-initialize_connection": {"connector": {"server_id": server_id}}})
    assert r.status_code == 200, r.text
    data = r.json()["connection_info"]["data"]
    assert nbd_greeting(data["host"], data["port"]) == b"NBDMAGICIHAVEOPT"

    # And everything can still be taken apart.
    r = admin.delete(f"/v2.1/{{p}}/servers/{server_id}/os-volume_attachments/{attached}")
    assert r.status_code == 202, r.text
    wait_status(admin, attached, "available")
    for session, vid in ((admin, attached), (admin, grown), (alice, alices)):
        assert session.delete(f"/v2/{{p}}/volumes/{vid}").status_code == 202
    for session, vid in ((admin, attached), (admin, grown), (alice, alices)):
        wait_for(f"volume {vid} gone",
                 lambda s=session, v=vid: s.get(f"/v2/{{p}}/volumes/{v}").status_code == 404)
    assert all(not any(f.endswith(".img") for f in files) for files in serve.pool_files().values())
    admin.client.close()
    alice.client.close()
