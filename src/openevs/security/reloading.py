"""A server TLS context that picks up new certificate, key and CA files without a restart.

`ReloadingServerContext.context` is the one `ssl.SSLContext` a listener is
created with. On every TLS handshake its SNI callback (OpenSSL calls it for
every ClientHello, with or without a server name) looks at the files'
(inode, size, mtime) and, when they changed, builds a fresh context from
them and hands that to the connection. So a reissued certificate, a CA
bundle with a new CA, or one without the old CA, applies to the next
connection; connections already up keep the context they were accepted with.

Rules this module keeps:
- files that cannot be used (half-copied, key and certificate not matching)
  never replace a working context: the previous one stays, the error is
  logged once per change of the files;
- one stat per file per handshake, no reading unless something changed.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable

from openevs.security import SecurityError
from openevs.security.pki import TlsFiles
from openevs.security.tls import server_context

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int], ...]


def files_stamp(files: TlsFiles) -> Stamp:
    """What changes when any of the files is replaced or rewritten."""
    stamps = []
    for path in (files.ca, files.cert, files.key):
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0))
            continue
        stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class ReloadingContext:
    """A context rebuilt from its files when they change (`current()`); a client calls
    it for each new connection (the agents' replication link, agent/node.py)."""

    def __init__(self, files: TlsFiles, build: Callable[[TlsFiles], ssl.SSLContext]) -> None:
        self.files = files
        self._build = build
        self._stamp = files_stamp(files)
        self._current = build(files)  # PkiError here: the component refuses to start
        self._failed_stamp: Stamp | None = None
        self.reloads = 0

    def current(self) -> ssl.SSLContext:
        """The context of the files as they are now (the previous one if they do not work)."""
        stamp = files_stamp(self.files)
        if stamp != self._stamp and stamp != self._failed_stamp:
            try:
                fresh = self._build(self.files)
            except SecurityError as exc:
                self._failed_stamp = stamp
                log.error("TLS files changed but cannot be used, keeping the previous ones: %s", exc)
            else:
                self._current, self._stamp, self._failed_stamp = fresh, stamp, None
                self.reloads += 1
                log.info("TLS certificate, key or CA bundle reloaded from %s", self.files.cert.parent)
        return self._current


class ReloadingServerContext(ReloadingContext):
    """The accepting side of TLS over files that may be replaced while it runs."""

    def __init__(
        self,
        files: TlsFiles,
        build: Callable[[TlsFiles], ssl.SSLContext] = server_context,
    ) -> None:
        super().__init__(files, build)
        self.context = build(files)
        self.context.sni_callback = self._on_hello

    def _on_hello(self, conn: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        conn.context = self.current()
