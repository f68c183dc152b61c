"""Engine and session setup; Alembic upgrade on start.

SQLite runs with WAL, foreign keys on and a busy timeout so that the API
threads and the reconciler can share one file; the writers of one process
queue on a lock (db/write_gate.py) instead of SQLite's sleeping busy handler.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from openevs.db.write_gate import WriteGate

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30.0
SQLITE_POOL_SIZE = 16  # connections kept open (each: the file, its WAL and shared memory)
SQLITE_MAX_OVERFLOW = 48  # more, opened while needed (SQLAlchemy's default: 5 + 10)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # A connection per thread that may want one (the API's 40 worker threads,
        # the reconciler and its re-grant pool): a writer waiting for SQLite's write
        # lock holds its connection, and reads must not queue behind it for one.
        in_memory = url in ("sqlite://", "sqlite:///") or ":memory:" in url  # a pool of one
        pool = {} if in_memory else {"pool_size": SQLITE_POOL_SIZE, "max_overflow": SQLITE_MAX_OVERFLOW}
        connect = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        # No pre-ping: a file never drops a connection (it cost a SELECT 1 per checkout).
        engine = create_engine(url, connect_args=connect, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        # This process's writers queue on a lock, not in SQLite's sleeping busy handler.
        WriteGate(timeout_s=SQLITE_BUSY_TIMEOUT_S).install(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, sealer: object | None = None) -> None:
    """Bring the schema to the newest revision (idempotent). `sealer` (a
    security.sealing.Sealer) is the key the migrations seal existing secrets with."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = alembic_config(url)
    cfg.attributes["sealer"] = sealer
    command.upgrade(cfg, "head")


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
