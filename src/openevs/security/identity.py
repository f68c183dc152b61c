"""Who a certificate names: a role (CertRole) and, for an agent, its AZ.

The identity is written into the subject by pki.issue and read back from a
peer's certificate by tls.peer_identity: OU=openevs-<role>, CN=<role> or
CN=agent:<az> (also written as the subjectAltName URI urn:openevs:<CN>).
OU and CN must agree, so no certificate of this deployment can be read as
two different components. USAGES is each role's extended key usage (what
TLS lets it do: serve, connect, or both).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openevs.security import PeerRejected, PkiError

ORGANIZATION = "openevs"
UNIT_PREFIX = "openevs-"

_AZ = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class CertRole(StrEnum):
    CONTROLLER = "controller"  # calls the agents' control API
    AGENT = "agent"  # serves the control API, NBD and the link; calls peers and the witness
    WITNESS = "witness"  # serves the quorum protocol
    API = "api"  # the public HTTPS endpoint


USAGES: dict[CertRole, tuple[x509.ObjectIdentifier, ...]] = {
    CertRole.CONTROLLER: (ExtendedKeyUsageOID.CLIENT_AUTH,),
    CertRole.AGENT: (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    CertRole.WITNESS: (ExtendedKeyUsageOID.SERVER_AUTH,),
    CertRole.API: (ExtendedKeyUsageOID.SERVER_AUTH,),
}


def check_az(az: str) -> str:
    if not _AZ.fullmatch(az):
        raise PkiError(
            f"bad AZ name {az!r}: 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return az


@dataclass(frozen=True)
class Identity:
    """Which component a certificate names: a role, and the AZ of an agent."""

    role: CertRole
    az: str | None = None

    def __post_init__(self) -> None:
        if (self.role is CertRole.AGENT) != (self.az is not None):
            raise PkiError(f"an AZ goes with the agent role only (got role {self.role}, az {self.az!r})")
        if self.az is not None:
            check_az(self.az)

    def __str__(self) -> str:
        return f"{self.role}:{self.az}" if self.az else str(self.role)

    @property
    def uri(self) -> str:
        """The subjectAltName URI of this identity's certificates (urn:openevs:agent:az1.dc1)."""
        return f"urn:{ORGANIZATION}:{self}"

    @property
    def default_name(self) -> str:
        """The file name stem of this identity's certificate and key."""
        return f"{self.role}-{self.az}" if self.az else str(self.role)

    def subject(self) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, UNIT_PREFIX + self.role),
                x509.NameAttribute(NameOID.COMMON_NAME, str(self)),
            ]
        )

    @classmethod
    def from_names(cls, units: Sequence[str], common_names: Sequence[str]) -> Identity:
        """Parse OU and CN values of a subject; PeerRejected unless they name one of our roles."""
        if len(units) != 1 or len(common_names) != 1:
            raise PeerRejected(f"not an openevs certificate (OU {list(units)}, CN {list(common_names)})")
        unit, common = units[0], common_names[0]
        try:
            role = CertRole(unit.removeprefix(UNIT_PREFIX)) if unit.startswith(UNIT_PREFIX) else None
        except ValueError:
            role = None
        if role is None:
            raise PeerRejected(f"not an openevs role certificate (OU={unit!r})")
        az = common.removeprefix(f"{role}:") if role is CertRole.AGENT else None
        try:
            identity = cls(role, az)
        except PkiError as exc:
            raise PeerRejected(f"certificate CN={common!r} does not fit OU={unit!r}: {exc}") from None
        if str(identity) != common:
            raise PeerRejected(f"certificate CN={common!r} does not fit OU={unit!r}")
        return identity

    @classmethod
    def of(cls, cert: x509.Certificate) -> Identity:
        subject = cert.subject
        return cls.from_names(
            [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)],
            [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)],
        )
