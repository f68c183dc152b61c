"""Mutual TLS for the agent's control API: only the controller's certificate gets an answer.

uvicorn gives the ASGI app no client certificate, so the check sits in the
HTTP protocol object: asyncio calls `connection_made` only after the TLS
handshake succeeded (the chain to the CA bundle and the extended key usage
are verified by then), and `PeerCheckedH11Protocol` reads the role the
certificate names before h11 sees a byte. A peer that is not allowed
(an agent's or a witness's certificate, a certificate of no openevs role)
has its connection aborted: it learns nothing, not even an HTTP status.
A peer without a certificate, or with one of another CA, never finishes
the handshake.

Rules this module keeps: nothing of the request is parsed before the peer
is accepted; every refusal is logged once, with the peer's address and why.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from openevs.security import PeerRejected
from openevs.security.identity import CertRole, Identity
from openevs.security.tls import require_peer_role

log = logging.getLogger(__name__)

# Who may call an agent's control API. Agents call each other only over the
# NBD replication link, never over this API, so no agent certificate is here.
CONTROL_CALLERS = frozenset({CertRole.CONTROLLER})


def check_control_caller(ssl_object: ssl.SSLObject | None) -> Identity:
    """The caller's identity if it may use the control API; PeerRejected otherwise."""
    if ssl_object is None:
        raise PeerRejected("not a TLS connection")
    return require_peer_role(ssl_object, CONTROL_CALLERS)


class PeerCheckedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol behind a check of the peer's certificate."""

    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        try:
            check_control_caller(transport.get_extra_info("ssl_object"))
        except PeerRejected as exc:
            self._refused = True
            log.warning("control API: refused %s: %s", transport.get_extra_info("peername"), exc)
            transport.abort()
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> None:
        if not self._refused:
            super().eof_received()

    def pause_writing(self) -> None:
        if not self._refused:
            super().pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            super().resume_writing()

    def connection_lost(self, exc: Any) -> None:
        if not self._refused:
            super().connection_lost(exc)
