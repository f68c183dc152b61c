"""The `openevs volume|server|replication` client against a real `openevs serve`.

The CLI runs as a subprocess, configured only by the clouds.yaml that serve
wrote (OS_CLIENT_CONFIG_FILE + OS_CLOUD), and every result is checked both
through the CLI's JSON output and the API; the other formats (an 80-column
table, value, csv, yaml, -c) are checked on the same objects, and each
family's known fields against the objects the API returns.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from openevs.cli import client_replication, client_servers, client_volumes
from tests.conftest import free_port
from tests.e2e.conftest import ServeProcess

pytestmark = pytest.mark.e2e

OPENEVS = str(Path(sys.executable).with_name("openevs"))


def run(env: dict[str, str], *args: str, cwd: Path | None = None, timeout_s: float = 120,
        columns: int = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPENEVS, *args], env={**env, "COLUMNS": str(columns)}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout_s)


def ok(env: dict[str, str], *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    result = run(env, *args, columns=columns)
    assert result.returncode == 0, f"openevs {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def assert_fits_80_columns(table: str, *ids: str) -> None:
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 80, table
    for one in ids:
        assert any(one in line for line in lines), f"{one} broken across lines:\n{table}"


def ok_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(ok(env, *args, "-f", "json").stdout)


def failing(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = run(env, *args)
    assert result.returncode == 1, f"openevs {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def env(shared_serve: ServeProcess) -> dict[str, str]:
    return shared_serve.client_env()


def test_volume_lifecycle(env: dict[str, str], shared_serve: ServeProcess) -> None:
    vol = ok_json(env, "volume", "create", "--size", "1", "--az", "az1.dc1", "--name", "cli-data",
                  "--type", "SSD", "--wait", "--timeout", "60")
    assert vol["status"] == "available" and vol["size"] == 1 and vol["volume_type"] == "SSD"

    listed = ok_json(env, "volume", "list")
    assert vol["id"] in {v["id"] for v in listed}
    table = ok(env, "volume", "list").stdout
    assert vol["id"] in table and "cli-data" in table
    assert_fits_80_columns(ok(env, "volume", "list", columns=80).stdout, vol["id"])
    rows = list(csv.DictReader(io.StringIO(ok(env, "volume", "list", "--long", "-f", "csv").stdout)))
    row = next(r for r in rows if r["ID"] == vol["id"])
    assert row["Name"] == "cli-data" and row["Size"] == "1" and row["Type"] == "SSD", row

    shown = ok_json(env, "volume", "show", vol["id"])
    assert shown["name"] == "cli-data"
    assert set(shown) == set(client_volumes.SHAPE.fields)
    assert ok(env, "volume", "show", vol["id"], "-f", "value", "-c", "status", "-c", "size").stdout \
        == "available\n1\n"
    assert yaml.safe_load(ok(env, "volume", "show", vol["id"], "-f", "yaml").stdout) == shown
    renamed = ok_json(env, "volume", "update", vol["id"], "--name", "cli-renamed")
    assert renamed["name"] == "cli-renamed"

    grown = ok_json(env, "volume", "extend", vol["id"], "--size", "2", "--wait", "--timeout", "60")
    assert grown["size"] == 2 and grown["status"] == "available"

    result = ok(env, "volume", "delete", vol["id"], "--wait", "--timeout", "60")
    assert "deleted" in result.stderr
    session = shared_serve.login()
    try:
        assert session.get(f"/v2/{{p}}/volumes/{vol['id']}").status_code == 404
    finally:
        session.client.close()


def test_server_attach_connect_detach(env: dict[str, str]) -> None:
    vol = ok_json(env, "volume", "create", "--size", "1", "--az", "az2.dc2", "--wait")
    srv = ok_json(env, "server", "create", "--name", "cli-web", "--az", "az2.dc2")
    assert srv["status"] == "ACTIVE"
    assert set(srv) == set(client_servers.SHAPE.fields)
    assert srv["id"] in {s["id"] for s in ok_json(env, "server", "list")}

    att = ok_json(env, "server", "attach", srv["id"], vol["id"])
    assert att["volumeId"] == vol["id"]
    assert set(att) == set(client_servers.ATTACHMENT.fields)
    assert ok_json(env, "volume", "show", vol["id"])["status"] == "in-use"
    listed = ok(env, "server", "list", "--long", "-f", "value", "-c", "id", "-c", "Volumes").stdout
    assert f"{srv['id']} {vol['id']}" in listed.splitlines()
    assert_fits_80_columns(ok(env, "server", "list", columns=80).stdout, srv["id"])

    uri = ok(env, "volume", "connect", vol["id"]).stdout.strip()
    assert uri.startswith("nbd://"), uri
    info = ok_json(env, "volume", "connect", vol["id"], "--server", srv["id"])
    assert info["data"]["uri"] == uri

    assert ok_json(env, "server", "stop", srv["id"])["status"] == "SHUTOFF"
    assert ok_json(env, "server", "start", srv["id"])["status"] == "ACTIVE"

    ok(env, "server", "detach", srv["id"], vol["id"])
    assert ok_json(env, "volume", "show", vol["id"])["status"] == "available"
    ok(env, "server", "delete", srv["id"])
    ok(env, "volume", "delete", vol["id"], "--wait")


def test_api_fault_is_shown_with_exit_1(env: dict[str, str]) -> None:
    result = failing(env, "volume", "create", "--size", "1", "--az", "nowhere.dc9")
    assert "nowhere.dc9" in result.stderr and "HTTP 400" in result.stderr, result.stderr

    missing = failing(env, "volume", "show", "00000000-0000-0000-0000-000000000000")
    assert "HTTP 404" in missing.stderr, missing.stderr


def test_no_credentials(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "OPENEVS_"))}
    env["HOME"] = str(tmp_path)
    result = run(env, "volume", "list", cwd=tmp_path)
    assert result.returncode == 1, result
    assert "no credentials found" in result.stderr
    assert str(tmp_path / "clouds.yaml") in result.stderr
    assert "OS_CLIENT_CONFIG_FILE" in result.stderr
    assert "Traceback" not in result.stderr


def test_connection_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "OPENEVS_"))}
    port = free_port()
    env.update(OS_AUTH_URL=f"http://127.0.0.1:{port}/v3", OS_USERNAME="admin", OS_PASSWORD="x",
               OS_PROJECT_NAME="admin")
    result = run(env, "volume", "list", cwd=tmp_path)
    assert result.returncode == 1, result
    assert f"127.0.0.1:{port}" in result.stderr and "openevs serve" in result.stderr, result.stderr


def test_wrong_password(env: dict[str, str], tmp_path: Path, shared_serve: ServeProcess) -> None:
    config = tmp_path / "clouds.yaml"
    config.write_text(shared_serve.clouds_yaml_path.read_text().replace("e2e-admin-secret", "wrong"))
    result = failing({**env, "OS_CLIENT_CONFIG_FILE": str(config)}, "volume", "list")
    assert "login as 'admin'" in result.stderr and "HTTP 401" in result.stderr, result.stderr


def test_replication_create_refused_for_same_az(env: dict[str, str]) -> None:
    a = ok_json(env, "volume", "create", "--size", "1", "--az", "az1.dc1", "--wait")
    b = ok_json(env, "volume", "create", "--size", "1", "--az", "az1.dc1", "--wait")
    result = failing(env, "replication", "create", "--volume", a["id"], "--volume", b["id"],
                     "--priority-station", "az1.dc1")
    assert "different AZs" in result.stderr, result.stderr
    one = failing(env, "replication", "create", "--volume", a["id"], "--priority-station", "az1.dc1")
    assert "exactly twice" in one.stderr
    assert ok_json(env, "replication", "list", "--volume-id", a["id"]) == []


def test_unknown_column_is_a_usage_error(env: dict[str, str]) -> None:
    result = run(env, "replication", "list", "-c", "ID", "-c", "bogus")
    assert result.returncode == 2, result
    assert "'bogus'" in result.stderr and "Priority station" in result.stderr, result.stderr
    assert result.stdout == ""


def test_replication_pair_lifecycle(env: dict[str, str]) -> None:
    prod = ok(env, "volume", "create", "--size", "1", "--az", "az1.dc1", "--wait",
              "-f", "value", "-c", "id").stdout.strip()
    dr = ok(env, "volume", "create", "--size", "1", "--az", "az2.dc2", "--wait",
            "-f", "value", "-c", "id").stdout.strip()
    pair = ok_json(env, "replication", "create", "--volume", prod, "--volume", dr,
                   "--priority-station", "az1.dc1", "--name", "cli-pair", "--wait", "--timeout", "60")
    assert pair["status"] == "available" and pair["replication_status"] == "active", pair
    assert pair["volume_ids"] == f"{prod},{dr}"
    assert [p["id"] for p in ok_json(env, "replication", "list", "--volume-id", dr)] == [pair["id"]]
    shown = ok_json(env, "replication", "show", pair["id"])
    assert shown["name"] == "cli-pair"
    assert set(shown) == set(client_replication.SHAPE.fields)

    table = ok(env, "replication", "list", "--volume-id", dr, columns=80).stdout
    assert_fits_80_columns(table, pair["id"])
    assert table.splitlines()[0].split() == ["ID", "Name", "Status", "Replication"]
    long = ok(env, "replication", "list", "--volume-id", dr, "--long", columns=80).stdout
    for one in (pair["id"], prod, dr):
        assert any(one in line for line in long.splitlines()), long
    picked = ok(env, "replication", "list", "--volume-id", dr, "-f", "yaml",
                "-c", "Replication", "-c", "id").stdout
    assert yaml.safe_load(picked) == [{"replication_status": "active", "id": pair["id"]}]
    shown_table = ok(env, "replication", "show", pair["id"], columns=80).stdout
    assert_fits_80_columns(shown_table, pair["id"], prod, dr)
    ok(env, "replication", "delete", pair["id"], "--wait", "--timeout", "60")
    assert ok_json(env, "replication", "list", "--volume-id", prod) == []
