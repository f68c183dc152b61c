"""HTTPS on the controller's /metrics listener: a scrape verified against the deployment
CA gets the metrics, a clear-text client and a client that stalls in the handshake get
nothing and hold up no other scrape; which certificate the listener takes (settings)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openevs.api.metrics import MetricsListener
from openevs.config import ConfigError, Settings, load_settings
from openevs.runtime import Runtime
from openevs.security import pki
from openevs.security.identity import CertRole, Identity
from openevs.security.tls import public_client_context, public_server_context, require_client_certificates


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pki"
    pki.init_ca(path)
    pki.issue(path, Identity(CertRole.API), ip_addresses=["127.0.0.1"])
    return path


@pytest.fixture
def listener(runtime: Runtime, pki_dir: Path) -> Iterator[MetricsListener]:
    files = pki.files_for(pki_dir, "api")
    started = MetricsListener(runtime, "127.0.0.1", 0, public_server_context(files.cert, files.key)).start()
    yield started
    started.stop()


def test_a_verified_scrape_gets_the_metrics_and_clear_text_gets_nothing(
    listener: MetricsListener, pki_dir: Path
) -> None:
    assert listener.base_url.startswith("https://127.0.0.1:")
    verify = public_client_context(pki_dir / "ca.pem")
    with socket.create_connection(("127.0.0.1", listener.port)) as stalled:
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        r = httpx.get(listener.base_url + "/metrics", verify=verify, timeout=10)
        assert r.status_code == 200 and "openevs_agent_up" in r.text
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{listener.port}/metrics", timeout=10)
    with pytest.raises(httpx.ConnectError):  # a client that does not know the deployment CA
        httpx.get(listener.base_url + "/metrics", verify=ssl.create_default_context(), timeout=10)
    r = httpx.get(listener.base_url + "/metrics", verify=verify, timeout=10)
    assert r.status_code == 200


def test_with_a_client_ca_a_scraper_without_a_certificate_gets_nothing(
    runtime: Runtime, pki_dir: Path
) -> None:
    files = pki.files_for(pki_dir, "api")
    tls = public_server_context(files.cert, files.key)
    require_client_certificates(tls, pki_dir / "ca.pem")
    started = MetricsListener(runtime, "127.0.0.1", 0, tls).start()
    try:
        url = started.base_url + "/metrics"
        with pytest.raises(httpx.HTTPError):  # verified server, but no client certificate
            httpx.get(url, verify=public_client_context(pki_dir / "ca.pem"), timeout=10)
        scraper = pki.issue(pki_dir, Identity(CertRole.CONTROLLER)).files  # any deployment certificate
        verify = public_client_context(pki_dir / "ca.pem")
        verify.load_cert_chain(scraper.cert, scraper.key)
        r = httpx.get(url, verify=verify, timeout=10)
        assert r.status_code == 200 and "openevs_agent_up" in r.text
    finally:
        started.stop()


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"OPENEVS_CONFIG": str(tmp_path / "absent.toml"), **values}


def test_which_certificate_the_listener_takes(tmp_path: Path) -> None:
    api = {"tls_cert": Path("api.pem"), "tls_key": Path("api.key")}
    assert Settings().metrics_tls_files() is None
    assert Settings(**api).metrics_tls_files() is None  # loopback stays plain
    assert Settings(metrics_listen="0.0.0.0:9776", **api).metrics_tls_files() == (
        api["tls_cert"],
        api["tls_key"],
    )
    own = Settings(metrics_tls_cert=Path("m.pem"), metrics_tls_key=Path("m.key"), **api)
    assert own.metrics_tls_files() == (Path("m.pem"), Path("m.key"))
    with pytest.raises(ConfigError, match="OPENEVS_METRICS_TLS_CERT and OPENEVS_METRICS_TLS_KEY go together"):
        load_settings(env=env(tmp_path, OPENEVS_METRICS_TLS_CERT="m.pem"))
    with pytest.raises(ConfigError, match="OPENEVS_METRICS_TLS_CLIENT_CA needs HTTPS"):
        load_settings(env=env(tmp_path, OPENEVS_METRICS_TLS_CLIENT_CA="ca.pem"))
