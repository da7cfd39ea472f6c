"""Dependencies of the routes: settings, sessions, dispatcher, the authenticated caller.

All are `async def`: FastAPI runs a plain `def` dependency on its thread pool, a hop per
dependency per request. The key check hops there only to read a key it does not remember.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import CeleryDispatcher
from api.keycache import KeyCache
from shared import auth
from shared.db import single_statement
from shared.settings import Settings


async def get_settings_dep(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


async def get_sessions(request: Request) -> sessionmaker[Session]:
    """The app's session factory; handlers open their own transaction."""
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


async def get_dispatcher(request: Request) -> CeleryDispatcher:
    """The app's dispatcher."""
    dispatcher: CeleryDispatcher = request.app.state.dispatcher
    return dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
DispatcherDep = Annotated[CeleryDispatcher, Depends(get_dispatcher)]


async def get_keys(request: Request) -> KeyCache:
    """The keys this process verified and may remember (api/keycache.py)."""
    keys: KeyCache = request.app.state.keys
    return keys


KeysDep = Annotated[KeyCache, Depends(get_keys)]


async def require_key(
    sessions: SessionsDep,
    settings: SettingsDep,
    keys: KeysDep,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> auth.Caller:
    """The caller behind the API key; 401 otherwise. A key this process remembers needs no read."""
    presented = x_api_key
    if not presented and authorization and authorization.lower().startswith("bearer "):
        presented = authorization[7:].strip()
    remembered = keys.get(presented)
    if remembered is not None:
        return remembered
    generation = keys.generation
    caller = await run_in_threadpool(_verify, sessions, settings, presented)
    keys.remember(presented, caller, generation)
    return caller


def _verify(
    sessions: sessionmaker[Session], settings: Settings, presented: str | None
) -> auth.Caller:
    with single_statement(sessions) as session:
        return auth.verify(session, settings, presented)


def _scoped(scope: str) -> Callable[[auth.Caller], Awaitable[auth.Caller]]:
    async def check(caller: Annotated[auth.Caller, Depends(require_key)]) -> auth.Caller:
        caller.require(scope)
        return caller

    check.__name__ = f"require_{scope}_scope"
    return check


CallerDep = Annotated[auth.Caller, Depends(_scoped("read"))]
SubmitterDep = Annotated[auth.Caller, Depends(_scoped("submit"))]
AdminDep = Annotated[auth.Caller, Depends(_scoped("admin"))]
