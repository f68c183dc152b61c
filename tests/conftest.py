"""Shared fixtures.

Database tests run on every database of `--db-url` (default: both a fresh
SQLite file and the PostgreSQL at 127.0.0.1:5432/test, on a database of
their own created for the session and migrated once with Alembic). Rows are
deleted between tests.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from openevs.db.models import Base
from openevs.db.session import Database, upgrade

PG_ADMIN_URL = os.environ.get(
    "OPENEVS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        action="store",
        default="sqlite,postgresql",
        help="comma-separated databases for database tests: sqlite, postgresql",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `long` run only with OPENEVS_LONG=1 (scripts/fault-run): the suite that
    CI runs stays under its time budget and keeps a short case of each scenario."""
    if os.environ.get("OPENEVS_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="long: set OPENEVS_LONG=1 or run scripts/fault-run")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_kind" in metafunc.fixturenames:
        kinds = [k.strip() for k in metafunc.config.getoption("--db").split(",") if k.strip()]
        metafunc.parametrize("db_kind", kinds, scope="session")


def _pg_database(tmp_name: str) -> str:
    import psycopg

    base = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{tmp_name}"')
        conn.execute(f'CREATE DATABASE "{tmp_name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{tmp_name}"


def _drop_pg_database(name: str) -> None:
    import psycopg

    base = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def db_url(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database of the given kind, made once per session."""
    if db_kind == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'openevs.db'}"
        upgrade(url)
        yield url
        return
    if db_kind != "postgresql":
        raise pytest.UsageError(f"unknown --db kind {db_kind!r}")
    name = f"openevs_test_{uuid.uuid4().hex[:10]}"
    try:
        url = _pg_database(name)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required for database tests: {exc}")
    upgrade(url)
    yield url
    _drop_pg_database(name)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """The session's database, emptied before each test."""
    db = Database(db_url)
    with db.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f"DELETE FROM {table.name}"))
    yield db
    db.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path
