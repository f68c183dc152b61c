"""At a TLS witness, an agent speaks only for its own AZ; the controller for any side."""

from __future__ import annotations

import pytest

from openevs.security.identity import CertRole, Identity
from openevs.witness import protocol as p
from openevs.witness.server import _check_side

A = Identity(CertRole.AGENT, "az1.dc1")
CONTROLLER = Identity(CertRole.CONTROLLER)


@pytest.mark.parametrize(
    ("identity", "side", "allowed"),
    [(A, "az1.dc1", True), (A, "az2.dc2", False), (CONTROLLER, "az2.dc2", True),
     (CONTROLLER, "controller", True), (None, "az2.dc2", True)],
)  # fmt: skip
def test_hello_side(identity: Identity | None, side: str, allowed: bool) -> None:
    hello = p.Hello(side=side)
    if allowed:
        _check_side(identity, hello)
    else:
        with pytest.raises(p.RemoteProtocolError, match="may not speak for side"):
            _check_side(identity, hello)


def test_only_the_hello_names_a_side() -> None:
    _check_side(A, p.Ping(id=1))
