"""One SQLite write transaction at a time per process, queued on a Python lock.

SQLite lets one writer in at a time; a connection that wants to write while
another holds the lock waits in SQLite's busy handler, which sleeps between
tries (1, 2, 5, ... then 100 ms each). Under a burst of writers from many
threads (the API's 40 workers answering clients that poll, the reconciler)
the lock then sits free for most of each sleep, and a write that matters
(a failover's commit) waits behind the burst for seconds: measured in
`bench/failover.py --pairs 100`, where 100 clients polling
`os-initialize_connection` kept the reconciler's commit of the failover
waiting ~4 s.

`WriteGate.install(engine)` takes a process-wide lock before the first
write statement of a transaction and gives it back as soon as the
transaction ends (the DBAPI commit or rollback returned, or the connection
went back to the pool or was closed), so this process's writers queue on a
Python lock and the next one starts as soon as the last one ended. It never
changes what is written or when a commit is durable: the statements, the
transaction boundaries and SQLite's own locking stay as they were (another
process, `openevs admin` or a second API process, still meets SQLite's lock
and busy handler). A writer that waits longer than SQLite's busy timeout
proceeds without the gate and meets SQLite's lock as before (never a wait
that SQLite alone would not have had, bounded the same way).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import Engine, event

READS = ("SELECT", "PRAGMA", "EXPLAIN")  # statements that never take SQLite's write lock


def is_write(statement: str) -> bool:
    return not statement.lstrip()[:7].upper().startswith(READS)


def _dbapi(connection: Any) -> Any:
    """The DBAPI connection of a pool's proxy (what the dialect's commit is handed)."""
    return getattr(connection, "dbapi_connection", connection)


class WriteGate:
    """The gate of one engine: a lock and the DBAPI connection whose transaction holds it."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._holder: Any = None  # set and cleared by the holder's own transaction only
        self.waits = 0  # acquisitions that had to wait (tests read it)

    def take(self, dbapi_connection: Any) -> None:
        if self._holder is dbapi_connection:
            return  # this transaction holds it already
        if not self._lock.acquire(blocking=False):
            self.waits += 1
            if not self._lock.acquire(timeout=self.timeout_s):
                return  # SQLite's own lock and busy timeout decide, as without the gate
        self._holder = dbapi_connection

    def give(self, dbapi_connection: Any) -> None:
        if dbapi_connection is not None and self._holder is dbapi_connection:
            self._holder = None
            self._lock.release()

    def install(self, engine: Engine) -> WriteGate:
        dialect: Any = engine.dialect
        do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            if is_write(statement):
                self.take(_dbapi(conn.connection))

        # After the DBAPI commit or rollback returned: the transaction is over.
        def commit(connection: Any) -> None:
            try:
                do_commit(connection)
            finally:
                self.give(_dbapi(connection))

        def rollback(connection: Any) -> None:
            try:
                do_rollback(connection)
            finally:
                self.give(_dbapi(connection))

        dialect.do_commit, dialect.do_rollback = commit, rollback

        # Safety nets: a connection back in the pool, or closed, holds no transaction.
        @event.listens_for(engine, "checkin")
        def _checkin(dbapi_connection: Any, record: Any) -> None:
            self.give(dbapi_connection)

        @event.listens_for(engine, "close")
        def _close(dbapi_connection: Any, record: Any) -> None:
            self.give(dbapi_connection)

        @event.listens_for(engine, "invalidate")
        def _invalidate(dbapi_connection: Any, record: Any, exception: Any) -> None:
            self.give(dbapi_connection)

        _gates[engine] = self
        return self


_gates: weakref.WeakKeyDictionary[Engine, WriteGate] = weakref.WeakKeyDictionary()


def gate_of(engine: Engine) -> WriteGate | None:
    """The gate installed on `engine` (None: none, e.g. PostgreSQL)."""
    return _gates.get(engine)
