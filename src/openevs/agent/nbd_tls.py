"""The agent's TLS for NBD: users' exports and the replication link, both ways.

One certificate, `agent-<az>` of the deployment PKI (security/pki.py), does
everything: it is the server certificate of the agent's NBD port, and the
client certificate the agent presents to its peers' link exports.

    side                   context                            who is checked
    NBD server (port)      server_context, client certificate  users: nobody (the export
                           optional                            name is the secret); link
                                                               exports: an agent certificate
    link client (primary)  client_context, no host name check  the peer is agent:<its AZ>

The host name is not what is checked on the link: the controller gives the
peer's address, which may be any of its names; the role and AZ in the
certificate (`require_peer`) say more than a name does.

Default policy (`default_policy`): with a PKI, TLS is REQUIRED on an NBD
port reachable from other hosts and OPTIONAL on a loopback one (local
tools may stay in clear text); without a PKI, OFF.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openevs.agent.nbd.handshake import TlsPolicy
from openevs.domain.addresses import is_loopback
from openevs.security import PeerRejected, PkiError, pki, tls
from openevs.security.identity import CertRole, Identity
from openevs.security.pki import TlsFiles
from openevs.security.reloading import ReloadingContext, ReloadingServerContext


@dataclass(frozen=True)
class AgentTls:
    """The agent's certificate files and the TLS policy of its NBD port.

    The `reloading_*` forms re-read the files when they change, so a CA rotation
    (docs/security.md) applies to the next connection without a restart: a
    certificate of a dropped CA is refused on the NBD port and the link, and
    the agent presents its reissued certificate to its peers."""

    files: TlsFiles
    policy: TlsPolicy

    def server_context(self, files: TlsFiles | None = None) -> ssl.SSLContext:
        return tls.server_context(files or self.files, client_cert_required=False)

    def link_server_context(self, files: TlsFiles | None = None) -> ssl.SSLContext:
        """The link protocol's side of an upgraded connection: agents only (link_server.py)."""
        return tls.server_context(files or self.files, client_cert_required=True)

    def link_context(self, files: TlsFiles | None = None) -> ssl.SSLContext:
        return tls.client_context(files or self.files, check_hostname=False)

    def reloading_server_context(self) -> ssl.SSLContext:
        return ReloadingServerContext(self.files, self.server_context).context

    def reloading_link_server_context(self) -> ssl.SSLContext:
        return ReloadingServerContext(self.files, self.link_server_context).context

    def reloading_link_context(self) -> Callable[[], ssl.SSLContext]:
        return ReloadingContext(self.files, self.link_context).current


def default_policy(nbd_host: str) -> TlsPolicy:
    return TlsPolicy.OPTIONAL if is_loopback(nbd_host) else TlsPolicy.REQUIRED


def agent_tls(
    az: str, pki_dir: Path | None, nbd_host: str, policy: TlsPolicy | None = None,
    *, files: TlsFiles | None = None,
) -> AgentTls | None:  # fmt: skip
    """The agent's TLS from `files` (`--tls-cert/--tls-key/--tls-ca`), else from
    `<pki_dir>/ca.pem` and `agent-<az>.pem/.key`; None without either.

    Raises PkiError when a file is missing, unusable, or names another
    component (the contexts are built here once, so a bad file stops the
    agent at start, not at its first connection)."""
    if files is None:
        if pki_dir is None:
            if policy not in (None, TlsPolicy.OFF):
                raise PkiError(f"NBD TLS {policy} needs the agent's certificates: pass --pki DIR")
            return None
        files = pki.files_for(pki_dir, Identity(CertRole.AGENT, az).default_name)
    certs = pki.read_bundle(files.cert)
    try:
        holder = Identity.of(certs[0]) if certs else None
    except PeerRejected as exc:
        raise PkiError(f"{files.cert}: {exc}") from None
    if holder != Identity(CertRole.AGENT, az):
        raise PkiError(f"{files.cert} is not the certificate of agent:{az} (it names {holder})")
    result = AgentTls(files, policy or default_policy(nbd_host))
    result.server_context()
    result.link_context()
    return result
