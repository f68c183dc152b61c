"""What a server connection (connection.py) needs from the server that accepted it,
and the errno values the NBD wire allows."""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from openevs.security.identity import Identity

from .buffers import BufferPool
from .constants import Errno
from .export import Export
from .protocol import TlsPolicy
from .stats import NbdStats

if TYPE_CHECKING:
    from .connection import Connection


def wire_errno(code: int | None) -> int:
    """Map a host errno to the NBD error values allowed on the wire."""
    if code in (errno.EPERM, errno.EROFS, errno.EACCES):
        return Errno.EPERM
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return Errno.ENOSPC
    if code in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return Errno.ENOTSUP
    if code in (errno.EINVAL, errno.ENOMEM, errno.EOVERFLOW, errno.ESHUTDOWN):
        return code  # same numbers on the wire
    return Errno.EIO


LinkHandler = Callable[[socket.socket, str, bytes], None]
"""Takes over an upgraded connection: its socket, the link session token, bytes already read."""


class Owner(Protocol):
    """What a connection needs from the server that accepted it (read live: limits
    may be changed while the server runs)."""

    pool: BufferPool
    max_in_flight: int
    max_in_flight_bytes: int
    max_output_bytes: int
    handshake_timeout_s: float
    tls_context: ssl.SSLContext | None
    tls_policy: TlsPolicy
    link_handler: LinkHandler | None  # takes connections upgraded to the replication link

    async def resolve(self, name: str, peer: Identity | None) -> Export | None:
        """The export called `name` for a client holding certificate `peer`, or None
        (also when it is not for this client)."""

    def register(self, conn: Connection, name: str) -> None:
        """`conn` entered transmission on export `name`."""

    def stats_for(self, name: str) -> list[NbdStats]:
        """The counters a connection to export `name` bumps (the server's, maybe a volume's)."""

    def forget(self, conn: Connection) -> None:
        """`conn` has ended."""
