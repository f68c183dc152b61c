"""The SQLite write gate (db/write_gate.py): this process's write transactions
queue on a lock held from their first write to their end, and nothing else
changes (what is written, when it is committed, SQLite's own locking)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from openevs.db.models import Base, Project
from openevs.db.session import Database
from openevs.db.write_gate import WriteGate, gate_of, is_write


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'gate.db'}")
    Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


def gate(db: Database) -> WriteGate:
    g = gate_of(db.engine)
    assert g is not None
    return g


def held(g: WriteGate) -> bool:
    """Whether the gate is held right now (a non-blocking try, given back at once)."""
    if g._lock.acquire(blocking=False):
        g._lock.release()
        return False
    return True


def count(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Project)) or 0)


def add(db: Database, name: str) -> None:
    with db.session() as session:
        session.add(Project(id=name, name=name, domain_id="default", description=""))


def test_which_statements_are_writes() -> None:
    assert not is_write("SELECT 1")
    assert not is_write("  select * from volumes")
    assert not is_write("PRAGMA journal_mode=WAL")
    assert is_write("UPDATE volumes SET status='x'")
    assert is_write("INSERT INTO projects VALUES (1)")
    assert is_write("DELETE FROM tokens")
    assert is_write("SAVEPOINT sa_savepoint_1")  # conservative: held until the transaction ends


def test_a_sqlite_database_has_a_gate_and_a_read_never_takes_it(db: Database) -> None:
    g = gate(db)
    with db.session() as session:
        session.scalar(select(func.count()).select_from(Project))
        assert not held(g)
    assert not held(g)


def test_held_from_the_first_write_until_the_commit(db: Database) -> None:
    g = gate(db)
    with db.session() as session:
        session.add(Project(id="p1", name="p1", domain_id="default", description=""))
        assert not held(g)  # nothing written yet
        session.flush()
        assert held(g)
        session.scalar(select(func.count()).select_from(Project))  # still one transaction
        assert held(g)
    assert not held(g)
    assert count(db) == 1


def test_given_back_on_rollback_and_on_an_exception(db: Database) -> None:
    g = gate(db)
    with pytest.raises(RuntimeError), db.session() as session:
        session.add(Project(id="p1", name="p1", domain_id="default", description=""))
        session.flush()
        assert held(g)
        raise RuntimeError("boom")
    assert not held(g)
    assert count(db) == 0
    session = db.sessions()
    session.add(Project(id="p2", name="p2", domain_id="default", description=""))
    session.flush()
    assert held(g)
    session.rollback()
    assert not held(g)
    session.close()


def test_given_back_when_the_connection_is_invalidated(db: Database) -> None:
    g = gate(db)
    session = db.sessions()
    session.execute(text("INSERT INTO projects (id, name, domain_id, description, created_at) "
                         "VALUES ('p1', 'p1', 'default', '', CURRENT_TIMESTAMP)"))  # fmt: skip
    assert held(g)
    session.connection().invalidate()
    assert not held(g)
    session.close()
    assert count(db) == 0


def test_concurrent_writers_all_commit_and_the_gate_queued_them(db: Database) -> None:
    g = gate(db)
    threads, each = 12, 15
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        start.wait()
        try:
            for i in range(each):
                add(db, f"t{t}-{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert count(db) == threads * each
    assert not held(g)
    assert g.waits > 0  # they met, and queued on the gate


def test_a_writer_of_another_process_still_meets_sqlites_lock(db: Database, tmp_path: Path) -> None:
    """Another process's writer is outside the gate: SQLite's lock and busy handler decide."""
    other = sqlite3.connect(tmp_path / "gate.db", isolation_level=None, timeout=30)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO projects (id, name, domain_id, description, created_at) "
                  "VALUES ('o', 'o', 'default', '', CURRENT_TIMESTAMP)")  # fmt: skip
    done = threading.Event()

    def ours() -> None:
        add(db, "ours")
        done.set()

    t = threading.Thread(target=ours)
    t.start()
    assert not done.wait(0.3)  # waits on SQLite's lock, holding our gate
    other.execute("COMMIT")
    other.close()
    t.join(30)
    assert done.is_set()
    assert count(db) == 2
    assert not held(gate(db))


def test_a_wait_past_the_timeout_goes_on_without_the_gate(tmp_path: Path) -> None:
    """A writer held up past the gate's timeout goes to SQLite as if there were no gate."""
    engine: Engine = create_engine(f"sqlite:///{tmp_path / 't.db'}", connect_args={"timeout": 30})
    g = WriteGate(timeout_s=0.2).install(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    g._lock.acquire()  # somebody holds it and never gives it back (a bug elsewhere)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM t")) == 1
    finally:
        g._lock.release()
        engine.dispose()


def test_postgresql_urls_get_no_gate() -> None:
    engine = create_engine("postgresql://nobody@127.0.0.1:1/none")
    assert gate_of(engine) is None
    engine.dispose()
