"""Migrations upgrade from empty and downgrade on PostgreSQL and SQLite; unmigrated databases are refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from shared.db import make_engine
from shared.errors import NotMigrated
from shared.migrations import current_revision, downgrade, ensure_migrated, head_revision, upgrade
from shared.models import Base
from shared.settings import Settings
from tests.conftest import PG_ADMIN


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path, database_url=None)
        return
    name = f"autopack_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield Settings(
        data_dir=tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    )
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_from_empty_then_downgrade_last_revision(empty_settings: Settings) -> None:
    engine = make_engine(empty_settings)
    with pytest.raises(NotMigrated, match="autopack db upgrade"):
        ensure_migrated(engine, empty_settings)
    upgrade(empty_settings)
    assert current_revision(engine) == head_revision(empty_settings)
    ensure_migrated(engine, empty_settings)
    assert {"runs", "phases", "attempts", "attempt_logs", "api_keys", "repositories"} <= set(
        inspect(engine).get_table_names()
    )
    downgrade(empty_settings, "-1")
    assert current_revision(engine) != head_revision(empty_settings)
    upgrade(empty_settings)
    assert current_revision(engine) == head_revision(empty_settings)
    engine.dispose()


def test_metrics_migrations_are_idempotent_over_existing_tables(empty_settings: Settings) -> None:
    upgrade(empty_settings)
    engine = make_engine(empty_settings)
    with engine.begin() as connection:  # the tables exist, but the version says they do not
        connection.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    upgrade(empty_settings)
    assert current_revision(engine) == head_revision(empty_settings)
    engine.dispose()


def test_migrations_match_the_models(empty_settings: Settings) -> None:
    upgrade(empty_settings)
    engine = make_engine(empty_settings)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []
