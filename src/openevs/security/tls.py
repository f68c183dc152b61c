"""TLS contexts for each side of each connection, and the check of who the peer is.

    component    accepts with                      connects with
    controller   -                                 client_context: agents' control API
    agent        server_context: control API,      client_context: peer agents' link,
                 replication link (and users'        the witness
                 NBD, client_cert_required=False)
    witness      server_context: agents            -
    api          public_server_context: users      -
    users        -                                 public_client_context(ca.pem)

TLS proves that a certificate comes from the deployment CA and is meant for
its side (the handshake enforces the extended key usage: a controller
certificate cannot serve, an api certificate cannot connect). It does not
prove which component the peer is: both sides of the agent link and the
controller present clientAuth certificates. So after the handshake the
accepting side calls `require_peer(conn, CertRole.CONTROLLER)` (or AGENT with
the AZ it expects), and a connecting side that did not check the host name
does the same for the server.

Rules this module keeps: TLS 1.2 at least (1.3 is negotiated whenever both
sides have it), no compression, no renegotiation; a peer's identity is read
only from a certificate the handshake verified.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection
from pathlib import Path
from typing import Any

from cryptography import x509

from openevs.security import PeerRejected, PkiError
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

PeerCert = ssl.SSLSocket | ssl.SSLObject | dict[str, Any] | bytes


def _context(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    for path in (cert, key):
        if not path.is_file():
            raise PkiError(f"{path} does not exist")
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise PkiError(f"cannot use certificate {cert} with key {key}: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    if not ca.is_file():
        raise PkiError(f"CA bundle {ca} does not exist")
    try:
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise PkiError(f"cannot use CA bundle {ca}: {exc}") from None


def server_context(files: TlsFiles, *, client_cert_required: bool = True) -> ssl.SSLContext:
    """The accepting side of a mutual-TLS connection: our certificate, peers' checked against the CA.

    With client_cert_required=False a client without a certificate is let in
    (users' NBD, where the export name is the secret); one that presents a
    certificate still has it verified, and require_peer tells the two apart.
    """
    ctx = _context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, files.cert, files.key)
    _load_ca(ctx, files.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if client_cert_required else ssl.CERT_OPTIONAL
    return ctx


def client_context(files: TlsFiles, *, check_hostname: bool = True) -> ssl.SSLContext:
    """The connecting side of a mutual-TLS connection: presents our certificate, verifies the server's.

    With check_hostname (pass server_hostname when wrapping) the server's
    certificate must name the host or IP connected to; without it the caller
    must `require_peer` the server's role (and AZ) after the handshake.
    """
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT)
    _load_ca(ctx, files.ca)
    _load_chain(ctx, files.cert, files.key)
    ctx.check_hostname = check_hostname
    return ctx


def public_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server that asks clients for no certificate (the public API)."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, cert, key)
    return ctx


def require_client_certificates(ctx: ssl.SSLContext, ca: Path) -> None:
    """Make a public server ask every client for a certificate that `ca` signed (the
    /metrics listener's scrapers); no role is checked, only the signature."""
    _load_ca(ctx, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED


def public_client_context(ca: Path | None = None) -> ssl.SSLContext:
    """A client that verifies the server against ca (default: the system's trust store)."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        ctx.load_default_certs()
    else:
        _load_ca(ctx, ca)
    return ctx


def _names_of(subject: Any) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    try:
        for rdn in subject:
            for key, value in rdn:
                names.setdefault(str(key), []).append(str(value))
    except (TypeError, ValueError):
        raise PeerRejected("the peer certificate's subject cannot be read") from None
    return names


def peer_identity(peer: PeerCert) -> Identity:
    """The role and AZ named by a peer's certificate.

    peer is a connection (ssl.SSLSocket, or the ssl.SSLObject of an asyncio
    transport: `writer.get_extra_info("ssl_object")`), the dict of
    `getpeercert()`, or DER bytes. A connection's certificate counts only if
    the handshake verified it; DER bytes are taken as verified by the caller.
    Raises PeerRejected when there is no certificate or it names no role.
    """
    if isinstance(peer, ssl.SSLSocket | ssl.SSLObject):
        peer = peer.getpeercert() or {}  # empty unless the handshake verified a certificate
    if isinstance(peer, bytes):
        try:
            return Identity.of(x509.load_der_x509_certificate(peer))
        except ValueError:
            raise PeerRejected("the peer certificate cannot be parsed") from None
    if not peer.get("subject"):
        raise PeerRejected("the peer presented no verified certificate")
    names = _names_of(peer["subject"])
    return Identity.from_names(names.get("organizationalUnitName", []), names.get("commonName", []))


def require_peer_role(peer: PeerCert, roles: Collection[CertRole]) -> Identity:
    """The peer's identity if its role is one of `roles`; PeerRejected otherwise."""
    identity = peer_identity(peer)
    if identity.role not in roles:
        wanted = " or ".join(sorted(roles))
        raise PeerRejected(f"a {wanted} certificate is required here; the peer presented {identity}")
    return identity


def require_peer(peer: PeerCert, role: CertRole, az: str | None = None) -> Identity:
    """The peer's identity if it is `role` (in AZ `az` when given); PeerRejected otherwise."""
    identity = peer_identity(peer)
    if identity.role is not role:
        raise PeerRejected(f"a {role} certificate is required here; the peer presented {identity}")
    if az is not None and identity.az != az:
        raise PeerRejected(f"the agent of {az} is expected here; the peer presented {identity}")
    return identity
