"""Admin routes: registered repositories and API keys (the `admin` scope)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminDep, KeysDep, SessionsDep, SettingsDep
from shared import auth, repos
from shared.db import transaction

router = APIRouter(tags=["admin"])


class RepositoryCreate(BaseModel):
    """A repository to register: a name runs will use, and its git URL or a path on the workers."""

    model_config = ConfigDict(extra="forbid")

    name: str
    url: str


class RepositoryRead(BaseModel):
    """A registered repository."""

    name: str
    url: str


class KeyCreate(BaseModel):
    """A key to create."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(default_factory=lambda: list(auth.DEFAULT_SCOPES))


class KeyRead(BaseModel):
    """A key as listed: never its value."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    """A new key, with its value shown this once."""

    key: str


@router.get("/repositories", response_model=list[RepositoryRead])
def list_repositories(
    sessions: SessionsDep, settings: SettingsDep, _admin: AdminDep
) -> list[RepositoryRead]:
    """Every registered repository, configured ones included."""
    with sessions() as session:
        return [
            RepositoryRead(name=n, url=u)
            for n, u in sorted(repos.list_all(session, settings).items())
        ]


@router.post("/repositories", status_code=201, response_model=RepositoryRead)
def register_repository(
    body: RepositoryCreate, sessions: SessionsDep, _admin: AdminDep
) -> RepositoryRead:
    """Register a repository under a name (409 if the name is taken)."""
    with transaction(sessions) as session:
        row = repos.add(session, body.name, body.url)
        return RepositoryRead(name=row.name, url=row.url)


@router.delete("/repositories/{name}", status_code=204)
def remove_repository(name: str, sessions: SessionsDep, _admin: AdminDep) -> None:
    """Unregister a repository."""
    with transaction(sessions) as session:
        repos.remove(session, name)


@router.get("/keys", response_model=list[KeyRead])
def list_keys(sessions: SessionsDep, _admin: AdminDep) -> list[KeyRead]:
    """All API keys, newest first."""
    with sessions() as session:
        return [KeyRead.model_validate(row) for row in auth.list_keys(session)]


@router.post("/keys", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, sessions: SessionsDep, _admin: AdminDep) -> KeyCreated:
    """Create a key; its value is in this response only."""
    with transaction(sessions) as session:
        row, plaintext = auth.create_key(session, body.name, body.scopes)
        return KeyCreated(**KeyRead.model_validate(row).model_dump(), key=plaintext)


@router.delete("/keys/{key_id}", response_model=KeyRead)
async def revoke_key(
    key_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    sessions: SessionsDep,
    keys: KeysDep,
    _admin: AdminDep,
) -> KeyRead:
    """Revoke a key; it stops working at once (other API processes hear of it within moments)."""

    def revoke() -> KeyRead:
        with transaction(sessions) as session:
            return KeyRead.model_validate(auth.revoke(session, key_id))

    revoked = await run_in_threadpool(revoke)
    keys.forget()  # on the event loop, like every use of the cache
    return revoked
