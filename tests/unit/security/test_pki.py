"""The deployment CA: files and modes, what a certificate says, chains checked with
cryptography's own verifier, refusals, and a CA rotation."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openevs.security import PeerRejected, PkiError, pki
from openevs.security.identity import USAGES, CertRole, Identity

AGENT1 = Identity(CertRole.AGENT, "az1.dc1")
CONTROLLER = Identity(CertRole.CONTROLLER)


@pytest.fixture
def umask_0() -> Iterator[None]:
    """The most permissive umask: a file's mode is exactly what the code asked for."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "pki")
    return tmp_path / "pki"


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _verify_server(ca_bundle: list[x509.Certificate], leaf: x509.Certificate, ip: str) -> None:
    store = verification.Store(ca_bundle)
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address(ip)))
    )
    verifier.verify(leaf, [])


def _verify_client(ca_bundle: list[x509.Certificate], leaf: x509.Certificate) -> None:
    verification.PolicyBuilder().store(verification.Store(ca_bundle)).build_client_verifier().verify(leaf, [])


def test_init_writes_a_ca_key_0600_and_a_certificate_0644(tmp_path: Path, umask_0: None) -> None:
    cert = pki.init_ca(tmp_path / "pki")
    assert _mode(tmp_path / "pki") == 0o700
    assert _mode(tmp_path / "pki" / "ca.key") == 0o600
    assert _mode(tmp_path / "pki" / "ca.pem") == 0o644
    assert [p.name for p in (tmp_path / "pki").iterdir() if p.name.startswith(".")] == []
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)
    assert pki.load_authority(tmp_path / "pki").certificate == cert


def test_certificate_files_are_0644_even_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        pki.init_ca(tmp_path / "pki")
        issued = pki.issue(tmp_path / "pki", CONTROLLER)
    finally:
        os.umask(old)
    assert (_mode(issued.files.cert), _mode(issued.files.key)) == (0o644, 0o600)


def test_init_refuses_an_existing_ca_without_force(ca_dir: Path) -> None:
    before = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(PkiError, match="already exist; pass --force"):
        pki.init_ca(ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == before
    pki.init_ca(ca_dir, force=True)
    assert (ca_dir / "ca.pem").read_bytes() != before


@pytest.mark.parametrize(
    ("identity", "cn", "ou"),
    [
        (AGENT1, "agent:az1.dc1", "openevs-agent"),
        (CONTROLLER, "controller", "openevs-controller"),
        (Identity(CertRole.WITNESS), "witness", "openevs-witness"),
        (Identity(CertRole.API), "api", "openevs-api"),
    ],
)
def test_a_leaf_names_its_role_and_has_the_role_usages(
    ca_dir: Path, identity: Identity, cn: str, ou: str, umask_0: None
) -> None:
    issued = pki.issue(ca_dir, identity, ip_addresses=["127.0.0.1"], dns_names=["node.example"])
    cert = issued.certificate
    assert issued.files == pki.files_for(ca_dir, identity.default_name)
    assert (_mode(issued.files.key), _mode(issued.files.cert)) == (0o600, 0o644)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == ou
    assert Identity.of(cert) == identity
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert tuple(eku) == USAGES[identity.role]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:openevs:{cn}"]
    bundle = pki.read_bundle(ca_dir / "ca.pem")
    if ExtendedKeyUsageOID.SERVER_AUTH in eku:
        _verify_server(bundle, cert, "127.0.0.1")
    else:
        with pytest.raises(verification.VerificationError):
            _verify_server(bundle, cert, "127.0.0.1")
    if ExtendedKeyUsageOID.CLIENT_AUTH in eku:
        _verify_client(bundle, cert)
    assert pki.read_bundle(issued.files.cert) == [cert]


def test_validity_serials_and_the_cap_at_the_ca(tmp_path: Path) -> None:
    pki.init_ca(tmp_path, days=30)
    now = dt.datetime.now(dt.UTC)
    first = pki.issue(tmp_path, CONTROLLER, days=10).certificate
    assert dt.timedelta(days=9) < first.not_valid_after_utc - now <= dt.timedelta(days=10)
    assert first.not_valid_before_utc < now
    capped = pki.issue(tmp_path, CONTROLLER, days=400, name="controller-2").certificate
    assert capped.not_valid_after_utc <= pki.load_authority(tmp_path).certificate.not_valid_after_utc
    assert first.serial_number != capped.serial_number
    with pytest.raises(PkiError, match="at least one day"):
        pki.issue(tmp_path, CONTROLLER, days=0, name="x")


def test_refusals_say_what_to_do(tmp_path: Path, ca_dir: Path) -> None:
    with pytest.raises(PkiError, match="no CA in .*openevs admin pki init"):
        pki.issue(tmp_path / "empty", CONTROLLER)
    with pytest.raises(PkiError, match="needs at least one --dns NAME or --ip ADDRESS"):
        pki.issue(ca_dir, AGENT1)
    with pytest.raises(PkiError, match="bad IP address"):
        pki.issue(ca_dir, AGENT1, ip_addresses=["300.1.1.1"])
    with pytest.raises(PkiError, match="bad certificate name"):
        pki.issue(ca_dir, CONTROLLER, name="../x")
    with pytest.raises(PkiError, match="not 'ca'"):
        pki.issue(ca_dir, CONTROLLER, name="ca")
    first = pki.issue(ca_dir, CONTROLLER)
    with pytest.raises(PkiError, match="controller.key and .*controller.pem already exist"):
        pki.issue(ca_dir, CONTROLLER)
    assert pki.read_bundle(first.files.cert) == [first.certificate]
    again = pki.issue(ca_dir, CONTROLLER, force=True)
    assert pki.read_bundle(first.files.cert) == [again.certificate] != [first.certificate]


@pytest.mark.parametrize("az", ["", "a:b", "-az", "a b", "x" * 64, "az1,az2"])
def test_bad_az_names_are_refused(az: str) -> None:
    with pytest.raises(PkiError, match="bad AZ name"):
        Identity(CertRole.AGENT, az)


def test_only_an_agent_has_an_az() -> None:
    with pytest.raises(PkiError, match="agent role only"):
        Identity(CertRole.CONTROLLER, "az1.dc1")
    with pytest.raises(PkiError, match="agent role only"):
        Identity(CertRole.AGENT)


@pytest.mark.parametrize(
    ("units", "commons", "expected"),
    [
        (["openevs-agent"], ["agent:az2.dc2"], Identity(CertRole.AGENT, "az2.dc2")),
        (["openevs-controller"], ["controller"], CONTROLLER),
        (["openevs-controller"], ["agent:az1.dc1"], None),  # CN and OU disagree
        (["openevs-agent"], ["controller"], None),
        (["openevs-agent"], ["agent:"], None),
        (["openevs-ca"], ["openevs CA"], None),
        (["openevs-root"], ["root"], None),
        (["staff"], ["controller"], None),
        ([], ["controller"], None),
        (["openevs-controller", "openevs-agent"], ["controller"], None),
        (["openevs-controller"], ["controller", "agent:az1.dc1"], None),
    ],
)
def test_identity_from_subject_names(units: list[str], commons: list[str], expected: Identity | None) -> None:
    if expected is None:
        with pytest.raises(PeerRejected):
            Identity.from_names(units, commons)
    else:
        assert Identity.from_names(units, commons) == expected


def test_a_ca_rotation_keeps_old_certificates_valid_until_the_old_ca_is_dropped(ca_dir: Path) -> None:
    old_ca = pki.load_authority(ca_dir).certificate
    old_leaf = pki.issue(ca_dir, AGENT1, ip_addresses=["10.0.0.1"]).certificate
    new_ca = pki.rotate_ca(ca_dir)
    bundle = pki.read_bundle(ca_dir / "ca.pem")
    assert bundle == [new_ca, old_ca]
    assert new_ca.subject != old_ca.subject
    assert pki.load_authority(ca_dir).certificate == new_ca
    controller = pki.issue(ca_dir, CONTROLLER).certificate
    controller.verify_directly_issued_by(new_ca)
    _verify_server(bundle, old_leaf, "10.0.0.1")  # a bundle of two CAs accepts leaves of either
    _verify_client(bundle, controller)
    issuers = {i.path.name: i.issuer for i in pki.list_certificates(ca_dir)}
    assert issuers == {"ca.pem": "self", "agent-az1.dc1.pem": "old CA", "controller.pem": "issuing CA"}
    with pytest.raises(PkiError, match="still issued by a CA to be dropped: agent-az1.dc1.pem"):
        pki.drop_old_cas(ca_dir)
    pki.issue(ca_dir, AGENT1, ip_addresses=["10.0.0.1"], force=True)
    assert pki.drop_old_cas(ca_dir) == [old_ca]
    assert pki.read_bundle(ca_dir / "ca.pem") == [new_ca]
    with pytest.raises(verification.VerificationError):
        _verify_server([new_ca], old_leaf, "10.0.0.1")
    assert pki.drop_old_cas(ca_dir) == []


def test_listing_and_finding_the_bundle_that_issued_a_certificate(tmp_path: Path, ca_dir: Path) -> None:
    api = pki.issue(ca_dir, Identity(CertRole.API), dns_names=["evs.example"], ip_addresses=["::1"])
    (ca_dir / "stray.pem").write_bytes(
        pki.read_bundle(ca_dir / "ca.pem")[0].public_bytes(serialization.Encoding.PEM)
    )
    infos = {i.path.name: i for i in pki.list_certificates(ca_dir)}
    assert infos["api.pem"].identity == Identity(CertRole.API)
    assert infos["api.pem"].alt_names == ["evs.example", "::1", "urn:openevs:api"]
    assert infos["ca.pem"].is_ca and infos["ca.pem"].identity is None
    assert infos["stray.pem"].identity is None
    other = pki.init_ca(tmp_path / "other")
    assert other not in pki.read_bundle(ca_dir / "ca.pem")
    found = pki.bundle_that_issued(api.files.cert, [tmp_path / "other" / "ca.pem", ca_dir / "ca.pem"])
    assert found == ca_dir / "ca.pem"
    assert pki.bundle_that_issued(api.files.cert, [tmp_path / "other" / "ca.pem", tmp_path / "nope"]) is None
    with pytest.raises(PkiError, match="does not exist"):
        pki.list_certificates(tmp_path / "nowhere")


def test_a_key_that_fits_no_certificate_of_the_bundle_is_refused(tmp_path: Path, ca_dir: Path) -> None:
    pki.init_ca(tmp_path / "other")
    (ca_dir / "ca.key").unlink()
    (ca_dir / "ca.key").write_bytes((tmp_path / "other" / "ca.key").read_bytes())
    with pytest.raises(PkiError, match="no certificate in .*ca.pem belongs to the key"):
        pki.load_authority(ca_dir)


def _self_signed(key: Any, days: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else's CA")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2 * abs(days) + 1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_an_operator_ca_of_another_key_type_may_join_the_bundle(ca_dir: Path) -> None:
    corporate = _self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), 30)
    with (ca_dir / "ca.pem").open("ab") as f:
        f.write(corporate.public_bytes(serialization.Encoding.PEM))
    assert len(pki.load_authority(ca_dir).bundle) == 2
    pki.issue(ca_dir, CONTROLLER)


def test_an_expired_ca_issues_nothing(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    tmp_path.joinpath("ca.pem").write_bytes(_self_signed(key, -1).public_bytes(serialization.Encoding.PEM))
    tmp_path.joinpath("ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(PkiError, match="expired on"):
        pki.issue(tmp_path, CONTROLLER)
