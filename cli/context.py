"""Settings and database access for CLI commands, with one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cli.common import describe_validation, fail
from shared.db import make_engine, make_session_factory
from shared.errors import NotMigrated
from shared.migrations import ensure_migrated, upgrade
from shared.settings import Settings, get_settings


def load_settings() -> Settings:
    """The settings, or exit 2 naming the bad variable."""
    try:
        return get_settings()
    except ValidationError as error:
        fail(f"invalid settings: {describe_validation(error)}")


def is_embedded(settings: Settings) -> bool:
    """Whether the database is the embedded SQLite file."""
    return settings.effective_database_url.startswith("sqlite")


def open_sessions(settings: Settings, *, auto_migrate: bool = False) -> sessionmaker[Session]:
    """A session factory on a migrated database; the embedded SQLite one is migrated on demand."""
    engine = make_engine(settings)
    try:
        if auto_migrate and is_embedded(settings):
            upgrade(settings)
        ensure_migrated(engine, settings)
    except NotMigrated as error:
        fail(str(error))
    except OperationalError as error:
        fail(f"cannot reach the database: {str(error.orig).strip().splitlines()[0]}")
    return make_session_factory(engine)


@contextmanager
def session_scope(settings: Settings, *, auto_migrate: bool = True) -> Iterator[Session]:
    """A committed unit of work for admin commands."""
    sessions = open_sessions(settings, auto_migrate=auto_migrate)
    with sessions() as session, session.begin():
        yield session
