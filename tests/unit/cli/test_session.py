"""The clouds.yaml `openevs serve` writes is the one the client reads back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from openevs.cli.server_side import clouds_yaml
from openevs.cli.session import ClientError, find_credentials
from openevs.config import Settings


@pytest.mark.parametrize("password", ["Zq3-_x9", "a: b #c", "'quoted'", "0123", "yes", "-leading"])
def test_written_clouds_yaml_reads_back(tmp_path: Path, password: str) -> None:
    path = tmp_path / "clouds.yaml"
    path.write_text(clouds_yaml(Settings(listen="127.0.0.1:9999", region="r1"), password))
    creds = find_credentials(env={"OS_CLIENT_CONFIG_FILE": str(path)}, cwd=tmp_path)
    assert (creds.auth_url, creds.username, creds.password) == ("http://127.0.0.1:9999/v3", "admin", password)
    assert (creds.project_name, creds.region_name) == ("admin", "r1")
    cloud = yaml.safe_load(path.read_text())["clouds"]["openevs"]
    assert cloud["identity_api_version"] == 3 and cloud["volume_api_version"] == 2


def test_without_a_password_the_snippet_says_what_to_fill_in() -> None:
    cloud = yaml.safe_load(clouds_yaml(Settings(), None))["clouds"]["openevs"]
    assert cloud["auth"]["password"] == "<the admin password>"


def test_a_broken_clouds_yaml_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "clouds.yaml"
    path.write_text("clouds: [unclosed\n")
    with pytest.raises(ClientError, match=f"cannot read {path}"):
        find_credentials(env={"OS_CLIENT_CONFIG_FILE": str(path)}, cwd=tmp_path)


def test_a_cloud_without_auth_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "clouds.yaml"
    path.write_text("clouds:\n  openevs:\n    region_name: r1\n")
    with pytest.raises(ClientError, match="has no 'auth' section"):
        find_credentials(env={"OS_CLIENT_CONFIG_FILE": str(path)}, cwd=tmp_path)
