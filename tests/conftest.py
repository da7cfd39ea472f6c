"""Fixtures on real services: a PostgreSQL database per session, Redis, git repositories."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.migrations import upgrade
from shared.settings import Settings

pytest_plugins = ["tests.services"]

PG_ADMIN = os.environ.get("AUTOPACK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("AUTOPACK_TEST_REDIS", "redis://127.0.0.1:6379")


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> Any:
    """Poll predicate until it returns a truthy value; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _worker_index(config: pytest.Config) -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw-1")
    return int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0


@pytest.fixture(scope="session")
def session_tag() -> str:
    """A tag unique to this test session and xdist worker."""
    return f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def fresh_database(tag: str) -> Iterator[str]:
    """A new, empty PostgreSQL database named after tag (its URL), dropped on exit."""
    name = f"autopack_test_{tag}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url(session_tag: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped at the end."""
    with fresh_database(session_tag) as url:
        yield url


@pytest.fixture(scope="session")
def broker_url(request: pytest.FixtureRequest) -> str:
    """A Redis database number of this xdist worker's own (1..15)."""
    return f"{REDIS_BASE}/{1 + _worker_index(request.config) % 15}"


@pytest.fixture(scope="session")
def settings(
    pg_url: str, broker_url: str, session_tag: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings for this session: its database, queue and data directory; short leases."""
    return Settings(
        database_url=pg_url,
        broker_url=broker_url,
        queue=f"autopack-test-{session_tag}",
        data_dir=tmp_path_factory.mktemp("data"),
        lease_ttl_s=3.0,
        heartbeat_interval_s=0.5,
        sweep_interval_s=1.0,
        kill_grace_s=1.0,
        log_json=True,
    )


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    """An engine on the session database, migrated once."""
    upgrade(settings)
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose transactions commit for real (executor and e2e tests)."""
    return make_session_factory(engine)


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test."""
    connection = engine.connect()
    outer = connection.begin()
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    yield session
    session.close()
    outer.rollback()
    connection.close()


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """Create a git repository with the given files committed on main."""

    def make(files: dict[str, str] | None = None, name: str = "origin") -> Path:
        path = tmp_path / name
        path.mkdir()
        _git(path, "init", "-q", "-b", "main")
        for rel, content in (files or {"README.md": "# demo\n"}).items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        _git(path, "add", "-A")
        _git(path, "commit", "-q", "-m", "initial")
        return path

    return make


@pytest.fixture
def git() -> Callable[..., str]:
    """Run git in a directory and return stdout."""
    return _git
