"""Settings of the control connections' TLS: OPENEVS_AGENT_TLS_*, OPENEVS_CONTROL_TLS_*,
the controller's default files in <data_dir>/pki, and the refusal of https agents
without a controller certificate."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from openevs.cli.server_side import _check_control_tls
from openevs.config import ConfigError, Settings, load_settings
from openevs.security import pki
from openevs.security.identity import CertRole, Identity


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"OPENEVS_CONFIG": str(tmp_path / "absent.toml"), **values}


def test_the_three_files_go_together(tmp_path: Path) -> None:
    for prefix in ("OPENEVS_AGENT_TLS", "OPENEVS_CONTROL_TLS"):
        with pytest.raises(ConfigError, match=f"{prefix}_CERT, {prefix}_KEY and {prefix}_CA go together"):
            load_settings(env=env(tmp_path, **{f"{prefix}_CERT": "/etc/a.pem"}))
    full = load_settings(env=env(tmp_path, OPENEVS_AGENT_TLS_CERT="a.pem", OPENEVS_AGENT_TLS_KEY="a.key",
                                 OPENEVS_AGENT_TLS_CA="ca.pem"))  # fmt: skip
    files = full.agent_tls_files()
    assert files is not None
    assert (files.cert, files.key, files.ca) == (Path("a.pem"), Path("a.key"), Path("ca.pem"))
    assert Settings().agent_tls_files() is None


def test_the_controller_finds_its_certificate_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.control_tls_files() is None
    pki.init_ca(settings.pki_dir())
    pki.issue(settings.pki_dir(), Identity(CertRole.CONTROLLER))
    assert settings.control_tls_files() == pki.files_for(settings.pki_dir(), "controller")


def test_https_agents_need_a_usable_controller_certificate(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, agent_urls={"az1.dc1": "https://10.1.0.5:8780"})
    with pytest.raises(typer.Exit) as exc:
        _check_control_tls(settings)
    assert exc.value.exit_code == 2
    pki.init_ca(settings.pki_dir())
    pki.issue(settings.pki_dir(), Identity(CertRole.CONTROLLER))
    _check_control_tls(settings)
    (settings.pki_dir() / "controller.key").write_text("not a key")
    with pytest.raises(typer.Exit):
        _check_control_tls(settings)
    _check_control_tls(Settings(data_dir=tmp_path / "none", agent_urls={"az1.dc1": "http://127.0.0.1:8780"}))
