"""`openevs serve` over HTTPS with a certificate from `openevs admin pki issue --api`:
openstacksdk, python-openstackclient and our own client, configured only from the
clouds.yaml serve wrote (https auth_url + cacert), and what a client that does
not speak TLS or does not trust the CA gets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openstack
import pytest

from tests.e2e.conftest import ServeProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]

BIN = Path(sys.executable).parent


def _pki(root: Path, *args: str) -> str:
    env = {
        "OPENEVS_DATA_DIR": str(root / "data"),
        "OPENEVS_CONFIG": str(root / "absent.toml"),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [str(BIN / "openevs"), "admin", "pki", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"openevs admin pki {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def https_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("https")
    _pki(root, "init")
    _pki(root, "issue", "--api", "--ip", "127.0.0.1")
    pki_dir = root / "data" / "pki"
    sp = ServeProcess(
        root,
        extra_env={"OPENEVS_TLS_CERT": str(pki_dir / "api.pem"), "OPENEVS_TLS_KEY": str(pki_dir / "api.key")},
        ca_file=pki_dir / "ca.pem",
    )
    sp.start()
    yield sp
    sp.close()


def test_clouds_yaml_has_the_https_url_and_the_deployment_ca(https_serve: ServeProcess) -> None:
    cloud = https_serve.written_clouds_yaml()["clouds"]["openevs"]
    printed = https_serve.printed_clouds_yaml(run=1)["clouds"]["openevs"]
    assert {**printed, "auth": {**printed["auth"], "password": cloud["auth"]["password"]}} == cloud
    assert cloud["auth"]["auth_url"] == f"https://127.0.0.1:{https_serve.port}/v3"
    assert cloud["cacert"] == str((https_serve.data_dir / "pki" / "ca.pem").resolve())


def test_the_catalog_names_https_endpoints(https_serve: ServeProcess) -> None:
    session = https_serve.login()
    try:
        r = session.get("/v3/auth/tokens", headers={"X-Subject-Token": session.token})
        assert r.status_code == 200, r.text
        urls = [ep["url"] for service in r.json()["token"]["catalog"] for ep in service["endpoints"]]
        assert urls and all(url.startswith(f"https://127.0.0.1:{https_serve.port}/") for url in urls), urls
    finally:
        session.client.close()


def test_openstacksdk_over_https(https_serve: ServeProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in https_serve.client_env().items():
        monkeypatch.setenv(key, value)
    conn: Any = openstack.connect(cloud="openevs")
    try:
        name = f"tls-{uuid.uuid4().hex[:8]}"
        volume = conn.block_storage.create_volume(size=1, availability_zone="az1.dc1", name=name)
        wait_for(
            "the volume to be available",
            lambda: conn.block_storage.get_volume(volume.id).status == "available",
            timeout_s=30,
        )
        assert name in {v.name for v in conn.block_storage.volumes(details=True)}
    finally:
        conn.close()


def test_openstack_cli_and_openevs_cli_over_https(https_serve: ServeProcess) -> None:
    env = {**https_serve.client_env(), "COLUMNS": "200"}
    session = https_serve.login()
    try:
        r = session.post(
            "/v2/{p}/volumes", json={"volume": {"size": 1, "availability_zone": "az2.dc2", "name": "cli"}}
        )
        assert r.status_code == 202, r.text
    finally:
        session.client.close()
    done = subprocess.run(
        [str(BIN / "openstack"), "volume", "list", "-f", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "cli" in {v["Name"] for v in json.loads(done.stdout)}
    done = subprocess.run(
        [str(BIN / "openevs"), "volume", "list", "-f", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "cli" in {v["name"] for v in json.loads(done.stdout)}


def test_plain_http_and_an_untrusting_client_are_refused(https_serve: ServeProcess) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{https_serve.port}/", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{https_serve.port}/", timeout=5)  # the system CAs do not know ours
    assert httpx.get(https_serve.base + "/", timeout=5, verify=https_serve.verify()).status_code == 300


def test_serve_refuses_to_start_with_unusable_tls_files(tmp_path: Path) -> None:
    env = {
        "OPENEVS_DATA_DIR": str(tmp_path / "data"),
        "OPENEVS_CONFIG": str(tmp_path / "absent.toml"),
        "OPENEVS_TLS_CERT": str(tmp_path / "missing.pem"),
        "OPENEVS_TLS_KEY": str(tmp_path / "missing.key"),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [str(BIN / "openevs"), "serve"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "missing.pem does not exist" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created
