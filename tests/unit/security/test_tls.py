"""TLS contexts and peer checks, through real OpenSSL handshakes run in memory (two
ssl.SSLObjects joined by MemoryBIOs: no socket, no thread)."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from openevs.security import PeerRejected, PkiError, pki, tls
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles

AZ1, AZ2 = "az1.dc1", "az2.dc2"
LOOPBACK = "127.0.0.1"


class Deployment:
    """A PKI directory with a CA and certificates issued on demand."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        pki.init_ca(root)

    def files(self, role: CertRole, az: str | None = None, name: str | None = None) -> TlsFiles:
        identity = Identity(role, az)
        path = pki.files_for(self.dir, name or identity.default_name)
        if not path.cert.exists():
            pki.issue(self.dir, identity, ip_addresses=[LOOPBACK], name=name)
        return path


@pytest.fixture
def dep(tmp_path: Path) -> Deployment:
    return Deployment(tmp_path / "pki")


@pytest.fixture
def foreign(tmp_path: Path) -> Deployment:
    return Deployment(tmp_path / "other")


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = LOOPBACK
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a handshake to the end, then one byte each way (TLS 1.3 reports a refused
    client certificate to the client only on its next read)."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_out, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(to_server, server_out, server_side=True)
    client = client_ctx.wrap_bio(to_client, client_out, server_hostname=server_hostname)
    pending = [client, server]
    for _ in range(10):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        to_server.write(client_out.read())
        to_client.write(server_out.read())
        if not pending:
            break
    assert not pending, "the handshake did not finish"
    client.write(b"c")
    to_server.write(client_out.read())
    assert server.read(1) == b"c"
    server.write(b"s")
    to_client.write(server_out.read())
    assert client.read(1) == b"s"
    return server, client


def test_mutual_tls_between_the_controller_and_an_agent(dep: Deployment) -> None:
    server, client = handshake(
        tls.server_context(dep.files(CertRole.AGENT, AZ1)), tls.client_context(dep.files(CertRole.CONTROLLER))
    )
    assert server.version() == client.version() == "TLSv1.3"
    assert tls.require_peer(server, CertRole.CONTROLLER) == Identity(CertRole.CONTROLLER)
    assert tls.require_peer(client, CertRole.AGENT, AZ1) == Identity(CertRole.AGENT, AZ1)


def test_a_client_certificate_from_another_ca_is_refused(dep: Deployment, foreign: Deployment) -> None:
    with pytest.raises(ssl.SSLError, match="certificate verify failed|unknown ca"):
        handshake(
            tls.server_context(dep.files(CertRole.AGENT, AZ1)),
            tls.client_context(replace(foreign.files(CertRole.CONTROLLER), ca=dep.dir / "ca.pem")),
        )


def test_a_server_certificate_from_another_ca_is_refused(dep: Deployment, foreign: Deployment) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(
            tls.server_context(foreign.files(CertRole.AGENT, AZ1)),
            tls.client_context(dep.files(CertRole.CONTROLLER)),
        )


def test_a_client_without_a_certificate_is_refused(dep: Deployment) -> None:
    with pytest.raises(ssl.SSLError, match="peer did not return a certificate|certificate required"):
        handshake(
            tls.server_context(dep.files(CertRole.AGENT, AZ1)), tls.public_client_context(dep.dir / "ca.pem")
        )


def test_the_role_check_refuses_an_agent_certificate_where_the_controller_is_required(
    dep: Deployment,
) -> None:
    server, client = handshake(
        tls.server_context(dep.files(CertRole.AGENT, AZ1)), tls.client_context(dep.files(CertRole.AGENT, AZ2))
    )
    with pytest.raises(
        PeerRejected, match="a controller certificate is required here; the peer presented agent:az2"
    ):
        tls.require_peer(server, CertRole.CONTROLLER)
    with pytest.raises(PeerRejected, match="the agent of az3.dc3 is expected"):
        tls.require_peer(server, CertRole.AGENT, "az3.dc3")
    assert tls.require_peer(server, CertRole.AGENT, AZ2).az == AZ2
    with pytest.raises(PeerRejected, match="a witness certificate is required"):
        tls.require_peer(client, CertRole.WITNESS)


def test_key_usage_keeps_each_role_on_its_side(dep: Deployment) -> None:
    # A controller certificate cannot serve; an api or witness certificate cannot connect.
    with pytest.raises(ssl.SSLCertVerificationError, match="unsuitable certificate purpose"):
        handshake(
            tls.server_context(dep.files(CertRole.CONTROLLER)),
            tls.client_context(dep.files(CertRole.AGENT, AZ1)),
        )
    for role in (CertRole.API, CertRole.WITNESS):
        with pytest.raises(ssl.SSLError, match="unsuitable certificate purpose"):
            handshake(tls.server_context(dep.files(CertRole.AGENT, AZ1)), tls.client_context(dep.files(role)))


def test_host_name_checks_and_the_role_check_instead(dep: Deployment) -> None:
    server_ctx = tls.server_context(dep.files(CertRole.AGENT, AZ1))
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        handshake(server_ctx, tls.client_context(dep.files(CertRole.AGENT, AZ2)), server_hostname="10.9.9.9")
    _, client = handshake(
        server_ctx,
        tls.client_context(dep.files(CertRole.AGENT, AZ2), check_hostname=False),
        server_hostname="10.9.9.9",
    )
    assert tls.require_peer(client, CertRole.AGENT, AZ1).az == AZ1


def test_a_bundle_of_two_cas_accepts_certificates_of_either(dep: Deployment) -> None:
    old_agent = dep.files(CertRole.AGENT, AZ1)
    old_controller = dep.files(CertRole.CONTROLLER)
    # Copies made before the rotation: a component that has not got the new bundle yet.
    old_bundle = dep.dir / "old-ca.bundle"
    old_bundle.write_bytes((dep.dir / "ca.pem").read_bytes())
    pki.rotate_ca(dep.dir)
    new_agent = dep.files(CertRole.AGENT, AZ2)
    new_controller = dep.files(CertRole.CONTROLLER, name="controller-new")
    assert len(pki.read_bundle(dep.dir / "ca.pem")) == 2
    for server_files, client_files in [
        (old_agent, new_controller),
        (new_agent, old_controller),
        (new_agent, new_controller),
        (old_agent, old_controller),
    ]:
        server, _ = handshake(tls.server_context(server_files), tls.client_context(client_files))
        assert tls.peer_identity(server).role is CertRole.CONTROLLER
    # ... while a component still on the old bundle refuses the new CA's certificates:
    # hence "distribute the bundle everywhere before anything uses a new certificate".
    with pytest.raises(ssl.SSLError):
        handshake(
            tls.server_context(TlsFiles(old_bundle, old_agent.cert, old_agent.key)),
            tls.client_context(new_controller),
        )


def test_optional_client_certificates_for_users_nbd(dep: Deployment) -> None:
    server_ctx = tls.server_context(dep.files(CertRole.AGENT, AZ1), client_cert_required=False)
    server, _ = handshake(server_ctx, tls.public_client_context(dep.dir / "ca.pem"))
    with pytest.raises(PeerRejected, match="no verified certificate"):
        tls.peer_identity(server)
    server, _ = handshake(server_ctx, tls.client_context(dep.files(CertRole.AGENT, AZ2)))
    assert tls.require_peer(server, CertRole.AGENT, AZ2).az == AZ2


def test_the_public_api_context_asks_for_no_client_certificate(dep: Deployment) -> None:
    api = dep.files(CertRole.API)
    server, client = handshake(
        tls.public_server_context(api.cert, api.key), tls.public_client_context(api.ca)
    )
    assert server.getpeercert() is None
    assert tls.peer_identity(client) == Identity(CertRole.API)


def test_tls_below_1_2_is_refused_and_1_2_still_works(dep: Deployment) -> None:
    server_ctx = tls.server_context(dep.files(CertRole.AGENT, AZ1))
    old = tls.client_context(dep.files(CertRole.CONTROLLER))
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(server_ctx, old)
    v12 = tls.client_context(dep.files(CertRole.CONTROLLER))
    v12.maximum_version = ssl.TLSVersion.TLSv1_2
    server, _ = handshake(server_ctx, v12)
    assert server.version() == "TLSv1.2"
    assert tls.require_peer(server, CertRole.CONTROLLER)


def test_peer_identity_from_der_and_from_the_getpeercert_dict(dep: Deployment) -> None:
    server, client = handshake(
        tls.server_context(dep.files(CertRole.WITNESS)), tls.client_context(dep.files(CertRole.AGENT, AZ2))
    )
    der = server.getpeercert(binary_form=True)
    assert der is not None
    assert (
        tls.peer_identity(der)
        == tls.peer_identity(server.getpeercert() or {})
        == Identity(CertRole.AGENT, AZ2)
    )
    assert tls.require_peer(client, CertRole.WITNESS) == Identity(CertRole.WITNESS)
    with pytest.raises(PeerRejected, match="cannot be parsed"):
        tls.peer_identity(b"not a certificate")
    with pytest.raises(PeerRejected, match="no verified certificate"):
        tls.peer_identity({})


def test_context_errors_name_the_file(dep: Deployment, foreign: Deployment) -> None:
    files = dep.files(CertRole.AGENT, AZ1)
    with pytest.raises(PkiError, match="does not exist"):
        tls.server_context(TlsFiles(files.ca, files.cert, dep.dir / "missing.key"))
    with pytest.raises(PkiError, match="CA bundle .* does not exist"):
        tls.client_context(TlsFiles(dep.dir / "nope.pem", files.cert, files.key))
    other = foreign.files(CertRole.AGENT, AZ1)
    with pytest.raises(PkiError, match="cannot use certificate .* with key"):
        tls.server_context(TlsFiles(files.ca, files.cert, other.key))
    with pytest.raises(PkiError, match="cannot use CA bundle"):
        tls.client_context(TlsFiles(files.key, files.cert, files.key))
