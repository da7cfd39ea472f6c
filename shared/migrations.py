"""Schema versioning through Alembic: upgrade, downgrade, and the start-up check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import migrations
from shared.db import prepare_sqlite_path
from shared.errors import NotMigrated
from shared.settings import Settings


def alembic_config(settings: Settings) -> Config:
    """An Alembic config pointing at the packaged migrations and the configured database."""
    prepare_sqlite_path(settings.effective_database_url)
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser treats '%' as interpolation; URLs may contain escaped characters.
    config.set_main_option("sqlalchemy.url", settings.effective_database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Apply migrations up to revision."""
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "-1") -> None:
    """Revert migrations down to revision."""
    command.downgrade(alembic_config(settings), revision)


def head_revision(settings: Settings) -> str | None:
    """The newest revision this code ships."""
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None when never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def ensure_migrated(engine: Engine, settings: Settings) -> None:
    """Refuse to run against a database that is not at the head revision."""
    current, head = current_revision(engine), head_revision(settings)
    if current != head:
        state = "empty" if current is None else f"at revision {current}"
        raise NotMigrated(
            f"database is {state} but this Autopack needs {head}: run `autopack db upgrade`"
        )
