"""`openevs admin pki`: init, issue, show, rotate-ca, drop-old-ca, and their refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from openevs.cli.main import build_app
from openevs.security import pki
from openevs.security.identity import CertRole, Identity


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    app = build_app()
    env = {
        "OPENEVS_CONFIG": str(tmp_path / "absent.toml"),
        "OPENEVS_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "200",
    }

    def invoke(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, ["admin", "pki", *args], env=env, terminal_width=200)
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def test_init_issue_show_in_the_default_directory(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pki_dir = tmp_path / "data" / "pki"
    out = run("init")
    assert f"{pki_dir / 'ca.key'}" in out and "mode 0600" in out
    out = run("issue", "--agent", "az2.dc2", "--ip", "10.0.0.2", "--dns", "node2.example")
    assert "issued agent:az2.dc2" in out
    run("issue", "--controller")
    run("issue", "--witness", "--ip", "10.0.0.9")
    run("issue", "--api", "--dns", "evs.example", "--days", "30", "--name", "public")
    assert {p.name for p in pki_dir.iterdir()} == {
        "ca.pem", "ca.key", "agent-az2.dc2.pem", "agent-az2.dc2.key", "controller.pem", "controller.key",
        "witness.pem", "witness.key", "public.pem", "public.key",
    }  # fmt: skip
    assert Identity.of(pki.read_bundle(pki_dir / "public.pem")[0]) == Identity(CertRole.API)
    out = run("show")
    for text in (
        "agent:az2.dc2",
        "node2.example, 10.0.0.2",
        "controller",
        "witness",
        "self (issuing)",
        "days left",
    ):
        assert text in out
    assert "29 days left" in out or "30 days left" in out


def test_refusals_are_one_clear_line(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert "no CA in" in run("issue", "--controller", code=1)
    assert "does not exist" in run("show", code=1)
    run("init")
    assert "already exist; pass --force" in run("init", code=1)
    assert "unknown AZ 'az9'" in run("issue", "--agent", "az9", "--ip", "1.2.3.4", code=1)
    assert "bad AZ name" in run("issue", "--agent", "a:b", code=1)
    assert "needs at least one --dns NAME or --ip ADDRESS" in run("issue", "--api", code=1)
    assert "name exactly one component" in run("issue", "--controller", "--witness", code=2)
    assert "name exactly one component" in run("issue", "--ip", "1.2.3.4", code=2)
    run("issue", "--controller")
    assert "already exist; pass --force" in run("issue", "--controller", code=1)
    run("issue", "--controller", "--force")


def test_rotation_from_the_command_line(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "elsewhere"
    run("init", "--dir", str(other))
    run("issue", "--agent", "az1.dc1", "--ip", "10.0.0.1", "--dir", str(other))
    assert "now trusts old and new" in run("rotate-ca", "--dir", str(other))
    assert len(pki.read_bundle(other / "ca.pem")) == 2
    assert "self (old)" in run("show", "--dir", str(other))
    assert "still issued by a CA to be dropped: agent-az1.dc1.pem" in run(
        "drop-old-ca", "--dir", str(other), code=1
    )
    run("issue", "--agent", "az1.dc1", "--ip", "10.0.0.1", "--dir", str(other), "--force")
    assert "dropped CN=openevs CA" in run("drop-old-ca", "--dir", str(other))
    assert "nothing to drop" in run("drop-old-ca", "--dir", str(other))
    assert not (tmp_path / "data" / "pki").exists()


def test_help_explains(run) -> None:  # type: ignore[no-untyped-def]
    out = run("--help")
    assert "docs/security.md" in out and "0600" in out
    out = run("issue", "--help")
    assert "Exactly one of --agent AZ" in out
