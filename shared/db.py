"""Engine and session factories; built per process, never at import time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings


def prepare_sqlite_path(url: str) -> None:
    """Create the folder of a SQLite database file, so a first run needs no set-up."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    """An engine for the configured database (SQLite gets WAL and a busy timeout)."""
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        prepare_sqlite_path(url)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the progress display read while the executor writes; foreign keys are off by default.
            # pysqlite's implicit BEGIN is replaced by BEGIN IMMEDIATE below so fenced writes serialize.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql") and "connect_timeout" not in url:
        # A connect to an unreachable server fails in bounded time, so write retries keep to budget.
        kwargs.setdefault("connect_args", {"connect_timeout": 10})
    # Stale pooled connections (after a database restart or outage) are replaced on checkout: on
    # PostgreSQL those idle for a while are pinged (ping_when_idle), elsewhere every one.
    postgresql = url.startswith("postgresql") and "pool_pre_ping" not in kwargs
    kwargs.setdefault("pool_pre_ping", not postgresql)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    engine = create_engine(url, **kwargs)
    if postgresql:
        ping_when_idle(engine, settings.db_ping_idle_s)
    return engine


_USED_AT = "autopack_used_at"


def ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection on checkout only when it was last used more than idle_s ago.

    `pool_pre_ping` pings on every checkout: a round trip before every transaction, and a run
    makes several on its path. A connection returned to the pool moments ago is all but certainly
    alive; one that died meanwhile (the server restarted in that instant) fails its statement,
    SQLAlchemy then replaces every pooled connection, and the worker's writes retry
    (workers/ledger.py). A dead connection found by the ping is replaced before use, as with
    `pool_pre_ping`. idle_s = 0 pings every checkout.
    """

    @event.listens_for(engine, "connect")
    def _connected(_dbapi_connection: Any, record: Any) -> None:
        record.info[_USED_AT] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info[_USED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        used_at = record.info.get(_USED_AT)
        if used_at is not None and time.monotonic() - used_at < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # the pool drops it and checks out another (up to 3 tries)
            raise DisconnectionError(f"pooled connection is gone: {error}") from error


def dialect_of(factory: sessionmaker[Session]) -> str:
    """The name of the database a session factory is bound to ("postgresql", "sqlite")."""
    bind = factory.kw.get("bind")
    return str(getattr(getattr(bind, "dialect", None), "name", ""))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def single_statement(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for a transaction of one statement: API key checks, status polls, the writes
    that are one statement (a worker's claim, an attempt's start, a run's end on PostgreSQL).

    On PostgreSQL it runs in autocommit mode: the statement is its own transaction, atomic and
    durable as ever, without the BEGIN and COMMIT round trips. Elsewhere (SQLite) it is an
    ordinary transaction, committed at the end (its BEGIN IMMEDIATE hook runs either way). Give
    it one statement only: on PostgreSQL a second would be a transaction of its own.
    """
    with factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session
        else:
            with session.begin():
                yield session
