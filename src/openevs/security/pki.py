"""The deployment's certificate authority: create it, issue role certificates, keep the files.

Layout of a PKI directory (default `<data_dir>/pki`):

    ca.pem         the CA bundle every component trusts: the issuing CA's
                   certificate first, then older CAs still trusted during a
                   rotation (mode 0644)
    ca.key         the issuing CA's private key (0600); needed only where
                   certificates are issued, never on agents or witnesses
    <name>.pem     a leaf certificate (0644); <name> defaults to controller,
                   agent-<az>, witness or api
    <name>.key     its private key (0600)

Rules this module keeps:
- Keys are EC P-256 and signatures ECDSA with SHA-256, which OpenSSL
  (Python's ssl), GnuTLS (libnbd, nbdkit, qemu) and every TLS 1.2/1.3 stack
  accept; keys are stored unencrypted as PKCS#8 PEM.
- A certificate says who holds it, in a form a peer checks after the
  handshake (tls.require_peer): OU=openevs-<role> and CN=<role> or, for an
  agent, CN=agent:<az>. Its extended key usage is the role's (USAGES), so an
  api or witness certificate cannot act as a client and a controller
  certificate cannot serve.
- A file is written under a temporary name created with its final mode
  (keys 0600 from the first byte) and then linked into place, so a reader
  never sees half a file, and an existing file is replaced only with force.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openevs.security import PeerRejected, PkiError
from openevs.security.identity import ORGANIZATION, UNIT_PREFIX, USAGES, Identity

CA_DAYS = 3650
LEAF_DAYS = 365
CLOCK_SKEW = dt.timedelta(minutes=5)  # not_valid_before is back-dated by this much
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}")


@dataclass(frozen=True)
class TlsFiles:
    """What one component needs for TLS: the CA bundle, its certificate and its key."""

    ca: Path
    cert: Path
    key: Path


def files_for(pki_dir: Path, name: str) -> TlsFiles:
    return TlsFiles(ca=pki_dir / CA_CERT, cert=pki_dir / f"{name}.pem", key=pki_dir / f"{name}.key")


@dataclass(frozen=True)
class Issued:
    files: TlsFiles
    certificate: x509.Certificate


# -- files ---------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int, replace: bool) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with open(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have taken bits of a certificate's 0644
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PkiError(f"{path} exists; pass --force to replace it") from None
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def write_secret_file(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, mode 0600 from the first byte."""
    _write(path, data, KEY_MODE, replace=True)


def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise PkiError(f"{' and '.join(existing)} already {verb}; pass --force to replace")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def read_bundle(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file (a CA bundle, or a leaf)."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read certificates from {path}: {exc}") from None


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# -- the CA --------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    """The issuing CA: its key and certificate, and the bundle it heads."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    bundle: list[x509.Certificate]


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
         "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )  # fmt: skip
    return x509.KeyUsage(**(flags | allowed))


def _make_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, UNIT_PREFIX + "ca"),
            # Distinct per CA, so an old and a new CA in one bundle never share a subject.
            x509.NameAttribute(NameOID.COMMON_NAME, f"openevs CA {now:%Y-%m-%d} {secrets.token_hex(4)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _check_days(days: int) -> None:
    if days < 1:
        raise PkiError(f"validity must be at least one day, got {days}")


def init_ca(pki_dir: Path, *, days: int = CA_DAYS, force: bool = False) -> x509.Certificate:
    """Create the deployment CA: `ca.key` (0600) and `ca.pem`; returns the CA certificate."""
    _check_days(days)
    pki_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _refuse_existing([pki_dir / CA_KEY, pki_dir / CA_CERT], force)
    key, cert = _make_ca(days)
    _write(pki_dir / CA_KEY, _key_pem(key), KEY_MODE, replace=force)
    _write(pki_dir / CA_CERT, _cert_pem([cert]), CERT_MODE, replace=force)
    return cert


def load_authority(pki_dir: Path) -> Authority:
    """The issuing CA of a PKI directory; PkiError if there is none or it does not fit its bundle."""
    key_path, bundle_path = pki_dir / CA_KEY, pki_dir / CA_CERT
    if not key_path.exists():
        raise PkiError(f"no CA in {pki_dir} ({key_path} is missing): run `openevs admin pki init` first")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot read the CA key {key_path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC key")
    bundle = read_bundle(bundle_path)
    mine = _public_der(key.public_key())  # the bundle may hold other CAs, of any key type
    for cert in bundle:
        if _public_der(cert.public_key()) == mine:
            return Authority(key, cert, bundle)
    raise PkiError(f"no certificate in {bundle_path} belongs to the key {key_path}")


def rotate_ca(pki_dir: Path, *, days: int = CA_DAYS) -> x509.Certificate:
    """Make a new issuing CA; the bundle becomes new + every CA it held. Returns the new CA."""
    _check_days(days)
    old = load_authority(pki_dir)
    key, cert = _make_ca(days)
    # The bundle first, so that a crash in between leaves the old key issuing for a bundle
    # that already trusts the new CA, never a key whose CA nobody trusts.
    _write(pki_dir / CA_CERT, _cert_pem([cert, *old.bundle]), CERT_MODE, replace=True)
    _write(pki_dir / CA_KEY, _key_pem(key), KEY_MODE, replace=True)
    return cert


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def drop_old_cas(pki_dir: Path, *, force: bool = False) -> list[x509.Certificate]:
    """Keep only the issuing CA in the bundle; returns the CAs dropped.

    Refused (without force) while a certificate in the directory was issued
    by a CA to be dropped: it would stop working once the bundle is out.
    """
    authority = load_authority(pki_dir)
    dropped = [ca for ca in authority.bundle if ca != authority.certificate]
    stale = [
        info.path.name
        for info in list_certificates(pki_dir)
        if not info.is_ca and any(_issued_by(info.certificate, ca) for ca in dropped)
    ]
    if stale and not force:
        raise PkiError(
            f"still issued by a CA to be dropped: {', '.join(stale)}; reissue them first (or pass --force)"
        )
    if dropped:
        _write(pki_dir / CA_CERT, _cert_pem([authority.certificate]), CERT_MODE, replace=True)
    return dropped


# -- leaf certificates -----------------------------------------------------------


def _alt_names(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for dns in dns_names:
        try:
            names.append(x509.DNSName(dns.encode("idna").decode("ascii")))
        except UnicodeError:
            raise PkiError(f"bad DNS name {dns!r}") from None
    for ip in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"bad IP address {ip!r}") from None
    return names


def issue(
    pki_dir: Path,
    identity: Identity,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = LEAF_DAYS,
    name: str | None = None,
    force: bool = False,
) -> Issued:
    """Issue a certificate for one component from the directory's CA; writes <name>.key and <name>.pem.

    Roles that serve (agent, witness, api) need at least one DNS name or IP
    address: the clients check the server's name against them.
    """
    _check_days(days)
    name = name or identity.default_name
    if not _FILE_NAME.fullmatch(name) or name == CA_CERT.removesuffix(".pem"):
        raise PkiError(f"bad certificate name {name!r}: letters, digits, '.', '_', '-'; not 'ca'")
    usages = USAGES[identity.role]
    alt_names = _alt_names(dns_names, ip_addresses)
    if ExtendedKeyUsageOID.SERVER_AUTH in usages and not alt_names:
        raise PkiError(f"the {identity.role} certificate needs at least one --dns NAME or --ip ADDRESS")
    authority = load_authority(pki_dir)
    files = files_for(pki_dir, name)
    _refuse_existing([files.key, files.cert], force)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    if authority.certificate.not_valid_after_utc <= now:
        raise PkiError(f"the CA in {pki_dir} expired on {authority.certificate.not_valid_after_utc:%Y-%m-%d}")
    not_after = min(now + dt.timedelta(days=days), authority.certificate.not_valid_after_utc)
    ca_ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(identity.subject())
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    # The URI names the holder too; strict verifiers want a SAN even in a client certificate.
    alt_names.append(x509.UniformResourceIdentifier(identity.uri))
    builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(authority.key, hashes.SHA256())
    _write(files.key, _key_pem(key), KEY_MODE, replace=force)
    _write(files.cert, _cert_pem([cert]), CERT_MODE, replace=force)
    return Issued(files, cert)


# -- what is there -----------------------------------------------------------------


@dataclass(frozen=True)
class CertInfo:
    path: Path
    certificate: x509.Certificate
    is_ca: bool
    identity: Identity | None  # None: a CA, or a certificate not made by this module
    issuer: str  # "issuing CA", "old CA" or "unknown CA" (for a CA: "self")

    @property
    def alt_names(self) -> list[str]:
        try:
            san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return []
        return [str(n.value) for n in san]


def list_certificates(pki_dir: Path) -> list[CertInfo]:
    """The CAs of the bundle (issuing first) and every leaf certificate in the directory."""
    if not pki_dir.is_dir():
        raise PkiError(f"{pki_dir} does not exist: run `openevs admin pki init` first")
    bundle = read_bundle(pki_dir / CA_CERT) if (pki_dir / CA_CERT).exists() else []
    infos = [CertInfo(pki_dir / CA_CERT, ca, True, None, "self") for ca in bundle]
    for path in sorted(pki_dir.glob("*.pem")):
        if path.name == CA_CERT:
            continue
        for cert in read_bundle(path)[:1]:
            issuer = next(
                ("issuing CA" if i == 0 else "old CA" for i, ca in enumerate(bundle) if _issued_by(cert, ca)),
                "unknown CA",
            )
            try:
                identity: Identity | None = Identity.of(cert)
            except PeerRejected:
                identity = None
            infos.append(CertInfo(path, cert, False, identity, issuer))
    return infos


def bundle_that_issued(cert_path: Path, candidates: Iterable[Path]) -> Path | None:
    """The first CA bundle among candidates holding the issuer of the certificate at cert_path."""
    certs = read_bundle(cert_path)
    if not certs:
        return None
    for candidate in candidates:
        if candidate.is_file() and any(_issued_by(certs[0], ca) for ca in read_bundle(candidate)):
            return candidate
    return None
