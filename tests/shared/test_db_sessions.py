"""Session helpers against real databases: a single read opens no transaction it leaves behind."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory, single_statement
from shared.migrations import upgrade
from shared.settings import Settings


def test_single_statement_on_postgresql_runs_each_statement_in_its_own_transaction(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    with single_statement(sessions) as session:
        first = session.execute(text("SELECT now(), txid_current_if_assigned()")).one()
        second = session.execute(text("SELECT now()")).scalar()
    # now() is the start of the current transaction: it moves between two autocommit statements.
    assert first[0] != second and first[1] is None
    with sessions() as session:  # a plain session still groups its statements in one transaction
        a = session.execute(text("SELECT now()")).scalar()
        b = session.execute(text("SELECT now()")).scalar()
    assert a == b


def test_single_statement_on_sqlite_leaves_no_lock_behind(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'autopack.db'}")
    upgrade(settings)
    engine = make_engine(settings)
    try:
        with single_statement(make_session_factory(engine)) as session:
            assert session.execute(text("SELECT count(*) FROM api_keys")).scalar() == 0
        other = sqlite3.connect(tmp_path / "autopack.db", timeout=1, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # fails with "database is locked" if the read held it
        other.execute("INSERT INTO repositories (name, url, created_at) VALUES ('r', '/x', '2026')")
        other.execute("COMMIT")
        other.close()
    finally:
        engine.dispose()


def test_a_write_through_single_statement_is_committed_on_both_databases(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'autopack.db'}")
    upgrade(settings)
    sqlite_engine = make_engine(settings)
    name = f"single-{tmp_path.name}"
    insert = text("INSERT INTO repositories (name, url, created_at) VALUES (:n, '/x', :t)")
    count = text("SELECT count(*) FROM repositories WHERE name = :n")
    try:
        for factory in (sessions, make_session_factory(sqlite_engine)):
            with single_statement(factory) as session:
                session.execute(insert, {"n": name, "t": datetime.now(UTC)})
            with factory() as session:  # a new session sees it: it was committed
                assert session.execute(count, {"n": name}).scalar() == 1
    finally:
        sqlite_engine.dispose()
