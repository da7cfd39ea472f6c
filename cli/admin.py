"""Operator commands: database migrations, API keys, registered repositories."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.exc import OperationalError

from cli.common import console, fail
from cli.context import load_settings, session_scope
from shared import auth, repos
from shared.db import make_engine
from shared.errors import AutopackError
from shared.metrics import rollups
from shared.migrations import current_revision, downgrade, head_revision, upgrade

db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for clients.", no_args_is_help=True)
repos_app = typer.Typer(help="Repositories runs may name.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: head)."""
    settings = load_settings()
    try:
        upgrade(settings, revision)
    except OperationalError as error:
        fail(f"cannot reach the database: {str(error.orig).strip().splitlines()[0]}")
    console.print(f"database at revision {current_revision(make_engine(settings))}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()] = "-1") -> None:
    """Revert migrations down to REVISION (default: one step)."""
    settings = load_settings()
    downgrade(settings, revision)
    console.print(f"database at revision {current_revision(make_engine(settings))}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's revision and the newest one this code ships."""
    settings = load_settings()
    try:
        current = current_revision(make_engine(settings))
    except OperationalError as error:
        fail(f"cannot reach the database: {str(error.orig).strip().splitlines()[0]}")
    console.print(f"current: {current or 'empty'}  head: {head_revision(settings)}")


@db_app.command("rebuild-rollups")
def db_rebuild_rollups() -> None:
    """Recompute the dashboard's hourly rollups from the metric rows (after a bulk import)."""
    settings = load_settings()
    try:
        with session_scope(settings) as session:
            counts = rollups.rebuild(session)
    except OperationalError as error:
        fail(f"cannot reach the database: {str(error.orig).strip().splitlines()[0]}")
    console.print(", ".join(f"{table}: {n} row(s)" for table, n in counts.items()))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who the key is for.")] = "default",
    scope: Annotated[
        list[str] | None,
        typer.Option(help="read, submit, admin (repeatable; default read + submit)."),
    ] = None,
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    try:
        with session_scope(load_settings()) as session:
            row, plaintext = auth.create_key(session, name, scope or auth.DEFAULT_SCOPES)
            key_id = row.id
    except AutopackError as error:
        fail(str(error))
    console.print(f"created key {key_id} ({name}); store it now, it is not shown again:")
    print(plaintext)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never their values)."""
    table = Table("id", "name", "prefix", "scopes", "created", "revoked")
    with session_scope(load_settings()) as session:
        for row in auth.list_keys(session):
            table.add_row(
                str(row.id),
                row.name,
                row.prefix,
                ",".join(row.scopes or []),
                row.created_at.isoformat(timespec="seconds"),
                row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "",
            )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int) -> None:
    """Revoke an API key; it stops working at once."""
    try:
        with session_scope(load_settings()) as session:
            auth.revoke(session, key_id)
    except AutopackError as error:
        fail(str(error))
    console.print(f"revoked key {key_id}")


@repos_app.command("add")
def repos_add(name: str, url_or_path: str) -> None:
    """Register a repository (git URL or local path) under NAME."""
    try:
        with session_scope(load_settings()) as session:
            row = repos.add(session, name, url_or_path)
            url = row.url
    except AutopackError as error:
        fail(str(error))
    console.print(f"registered {name} -> {url}")


@repos_app.command("list")
def repos_list() -> None:
    """List registered repositories."""
    settings = load_settings()
    table = Table("name", "source")
    with session_scope(settings) as session:
        for name, url in sorted(repos.list_all(session, settings).items()):
            table.add_row(name, url)
    console.print(table)


@repos_app.command("remove")
def repos_remove(name: str) -> None:
    """Unregister a repository."""
    try:
        with session_scope(load_settings()) as session:
            repos.remove(session, name)
    except AutopackError as error:
        fail(str(error))
    console.print(f"removed {name}")
