"""Registered repositories: clients name them; only operators map names to URLs or paths."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from shared.errors import Conflict, InvalidInput, NotFound
from shared.models import Repository
from shared.runs.spec import NAME_PATTERN
from shared.settings import Settings

_URL_RE = re.compile(r"^(https?|ssh|git|file)://[^\s]+$|^[\w.-]+@[\w.-]+:[^\s]+$")


def check_source(url_or_path: str) -> str:
    """Validate a repository source; local paths are made absolute."""
    if url_or_path.startswith("-") or any(c in url_or_path for c in "\x00\n\r"):
        raise InvalidInput(f"repository source {url_or_path!r} is not a URL or path", "url")
    if _URL_RE.match(url_or_path):
        return url_or_path
    path = Path(url_or_path).expanduser().resolve()
    if not path.is_dir():
        raise InvalidInput(f"repository path {str(path)!r} is not a directory", "url")
    return str(path)


# Every submission and every run start reads it: built once.
_URL_BY_NAME = select(Repository.url).where(Repository.name == bindparam("p_name"))


def resolve(session: Session, settings: Settings, name: str) -> str:
    """The source of a registered repository, from settings first, then the database."""
    if name in settings.repos:
        return settings.repos[name]
    return source_of(
        settings, name, session.connection().execute(_URL_BY_NAME, {"p_name": name}).scalar()
    )


def source_of(settings: Settings, name: str, registered: str | None) -> str:
    """resolve() with the database's URL for name already read (None: not registered there)."""
    if name in settings.repos:
        return settings.repos[name]
    if registered is None:
        raise NotFound(f"repository {name!r} is not registered")
    return str(registered)


def add(session: Session, name: str, url_or_path: str) -> Repository:
    """Register a repository under a name."""
    if not re.match(NAME_PATTERN, name):
        raise InvalidInput(f"repository name {name!r} must match {NAME_PATTERN}", "name")
    if session.get(Repository, name) is not None:
        raise Conflict(f"repository {name!r} is already registered")
    row = Repository(name=name, url=check_source(url_or_path))
    session.add(row)
    session.flush()
    return row


def remove(session: Session, name: str) -> None:
    """Unregister a repository."""
    row = session.get(Repository, name)
    if row is None:
        raise NotFound(f"repository {name!r} is not registered")
    session.delete(row)
    session.flush()


def list_all(session: Session, settings: Settings) -> dict[str, str]:
    """Every registered repository, configured ones included."""
    found = {row.name: row.url for row in session.scalars(select(Repository))}
    return {**found, **settings.repos}
