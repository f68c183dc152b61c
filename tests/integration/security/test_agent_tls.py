"""The agent's NBD TLS settings (agent/nbd_tls.py) from real PKI files: defaults by
address, and refusals of files that cannot serve this agent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from openevs.agent.nbd.handshake import TlsPolicy
from openevs.agent.nbd_tls import agent_tls, default_policy
from openevs.security import PkiError, pki
from openevs.security.identity import CertRole, Identity

AZ = "az1.dc1"


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    pki.issue(directory, Identity(CertRole.AGENT, AZ), ip_addresses=["127.0.0.1"])
    pki.issue(directory, Identity(CertRole.CONTROLLER))
    return directory


@pytest.mark.parametrize(
    ("host", "policy"),
    [("127.0.0.1", TlsPolicy.OPTIONAL), ("::1", TlsPolicy.OPTIONAL), ("localhost", TlsPolicy.OPTIONAL),
     ("0.0.0.0", TlsPolicy.REQUIRED), ("10.1.0.5", TlsPolicy.REQUIRED),
     ("storage1.example", TlsPolicy.REQUIRED)],
)  # fmt: skip
def test_required_off_loopback_optional_on_it(host: str, policy: TlsPolicy, pki_dir: Path) -> None:
    assert default_policy(host) is policy
    tls = agent_tls(AZ, pki_dir, host)
    assert tls is not None and tls.policy is policy
    assert tls.files.cert == pki_dir / f"agent-{AZ}.pem"


def test_no_pki_no_tls_and_a_policy_without_one_is_refused() -> None:
    assert agent_tls(AZ, None, "0.0.0.0") is None
    assert agent_tls(AZ, None, "0.0.0.0", TlsPolicy.OFF) is None
    with pytest.raises(PkiError, match="--pki"):
        agent_tls(AZ, None, "0.0.0.0", TlsPolicy.REQUIRED)


def test_a_certificate_of_another_component_is_refused(pki_dir: Path) -> None:
    with pytest.raises(PkiError, match="does not exist"):
        agent_tls("az2.dc2", pki_dir, "0.0.0.0")
    (pki_dir / "agent-az2.dc2.pem").write_bytes((pki_dir / f"agent-{AZ}.pem").read_bytes())
    (pki_dir / "agent-az2.dc2.key").write_bytes((pki_dir / f"agent-{AZ}.key").read_bytes())
    with pytest.raises(PkiError, match="not the certificate of agent:az2.dc2"):
        agent_tls("az2.dc2", pki_dir, "0.0.0.0")


def test_the_agent_command_stops_before_serving_on_a_bad_pki(pki_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "openevs.agent", "--az", "az9.dc9", "--pool", str(tmp_path / "pool"),
         "--listen", f"unix:{tmp_path / 'a.sock'}", "--nbd", "127.0.0.1:0", "--pki", str(pki_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "agent-az9.dc9.pem does not exist" in done.stderr
    assert not (tmp_path / "a.sock").exists()
