"""Who may talk to whom: the deployment CA (pki.py) and TLS contexts and peer checks (tls.py).

Every control connection of a deployment is mutual TLS with certificates
from one per-deployment CA; the certificate says which component holds it
(role, and AZ for agents), and the side that accepts a connection checks
that role before it answers. docs/security.md has the operator procedures,
docs/decisions.md the reasons.
"""

from __future__ import annotations

from openevs.domain.errors import OpenEvsError


class SecurityError(OpenEvsError):
    """Root of the errors of this package."""


class PkiError(SecurityError):
    """A certificate or key cannot be created, read or used; the message says which and why."""


class PeerRejected(SecurityError):
    """The peer's certificate does not name the component this connection needs."""


SHOWN_CHARS = 8


def redacted(secret: str) -> str:
    """How a secret name (an NBD export name, a link export) may appear in a log or an
    error message: its first few characters, enough to tell two apart, never enough to use."""
    return secret[:SHOWN_CHARS] + "..." if len(secret) > SHOWN_CHARS else "..."
