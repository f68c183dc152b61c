"""HTTPS settings of the public API: OPENEVS_TLS_*, the https endpoint, the clouds.yaml
`cacert` that serve writes, and the client reading it back."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import yaml

from openevs.cli.server_side import api_ca_file, clouds_yaml
from openevs.cli.session import ClientError, Credentials, find_credentials, tls_verification
from openevs.config import ConfigError, Settings, load_settings
from openevs.security import pki
from openevs.security.identity import CertRole, Identity

API = Identity(CertRole.API)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "data" / "pki")
    return tmp_path / "data"


def test_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    env = {"OPENEVS_CONFIG": str(tmp_path / "absent.toml"), "OPENEVS_TLS_CERT": "/etc/api.pem"}
    with pytest.raises(ConfigError, match="OPENEVS_TLS_CERT and OPENEVS_TLS_KEY go together"):
        load_settings(env=env)
    settings = load_settings(env={**env, "OPENEVS_TLS_KEY": "/etc/api.key"})
    assert settings.endpoint == "https://127.0.0.1:8776"
    assert (settings.tls_cert, settings.tls_key, settings.tls_ca) == (
        Path("/etc/api.pem"),
        Path("/etc/api.key"),
        None,
    )
    blank = load_settings(env={**env, "OPENEVS_TLS_CERT": "", "OPENEVS_TLS_KEY": " "})
    assert blank.tls_cert is None and blank.endpoint == "http://127.0.0.1:8776"
    assert load_settings(
        env={**env, "OPENEVS_TLS_KEY": "k", "OPENEVS_PUBLIC_URL": "https://evs.example/"}
    ).endpoint == ("https://evs.example")


def test_clouds_yaml_points_at_the_deployment_ca_that_issued_the_api_certificate(data_dir: Path) -> None:
    issued = pki.issue(data_dir / "pki", API, ip_addresses=["127.0.0.1"])
    settings = Settings(
        data_dir=data_dir, listen="127.0.0.1:9443", tls_cert=issued.files.cert, tls_key=issued.files.key
    )
    assert api_ca_file(settings) == (data_dir / "pki" / "ca.pem").resolve()
    path = data_dir / "clouds.yaml"
    path.write_text(clouds_yaml(settings, "pw-123456"))
    cloud = yaml.safe_load(path.read_text())["clouds"]["openevs"]
    assert cloud["auth"]["auth_url"] == "https://127.0.0.1:9443/v3"
    assert cloud["cacert"] == str((data_dir / "pki" / "ca.pem").resolve())
    creds = find_credentials(env={"OS_CLIENT_CONFIG_FILE": str(path)}, cwd=data_dir)
    assert creds.cacert == cloud["cacert"] and creds.verify
    assert isinstance(tls_verification(creds), ssl.SSLContext)


def test_a_certificate_of_another_ca_gets_tls_ca_or_the_system_store(tmp_path: Path, data_dir: Path) -> None:
    pki.init_ca(tmp_path / "corp")
    issued = pki.issue(tmp_path / "corp", API, dns_names=["evs.example"], name="evs")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    cert, key = moved / "evs.pem", moved / "evs.key"
    cert.write_bytes(issued.files.cert.read_bytes())
    key.write_bytes(issued.files.key.read_bytes())
    settings = Settings(data_dir=data_dir, tls_cert=cert, tls_key=key)
    assert api_ca_file(settings) is None  # neither the deployment CA nor a ca.pem beside it issued it
    assert "cacert" not in yaml.safe_load(clouds_yaml(settings, "pw"))["clouds"]["openevs"]
    # a ca.pem next to the certificate counts when it issued it
    assert (
        api_ca_file(Settings(data_dir=data_dir, tls_cert=issued.files.cert, tls_key=key)) == issued.files.ca
    )
    with_ca = Settings(data_dir=data_dir, tls_cert=cert, tls_key=key, tls_ca=tmp_path / "corp" / "ca.pem")
    assert yaml.safe_load(clouds_yaml(with_ca, "pw"))["clouds"]["openevs"]["cacert"] == str(
        (tmp_path / "corp" / "ca.pem").resolve()
    )
    assert "cacert" not in yaml.safe_load(clouds_yaml(Settings(data_dir=data_dir), "pw"))["clouds"]["openevs"]


def test_the_client_reads_cacert_verify_and_os_cacert(tmp_path: Path) -> None:
    path = tmp_path / "clouds.yaml"
    path.write_text(
        "clouds:\n  openevs:\n    verify: false\n"
        "    auth: {auth_url: 'https://h/v3', username: u, password: p}\n"
    )
    creds = find_credentials(env={"OS_CLIENT_CONFIG_FILE": str(path)}, cwd=tmp_path)
    assert tls_verification(creds) is False
    env = {
        "OS_AUTH_URL": "https://h/v3",
        "OS_USERNAME": "u",
        "OS_PASSWORD": "p",
        "OS_CACERT": str(tmp_path / "no.pem"),
    }
    creds = find_credentials(env=env, cwd=tmp_path)
    assert creds.cacert == str(tmp_path / "no.pem")
    with pytest.raises(ClientError, match="cannot use the CA bundle .*no.pem"):
        tls_verification(creds)
    assert tls_verification(Credentials("http://h/v3", "u", "p")) is True
