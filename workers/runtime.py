"""Per-process state of a worker: engine, sessions and executor, rebuilt after fork."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.dispatch import Dispatcher
from shared.settings import Settings, get_settings
from workers.attempts import worker_identity
from workers.executor import RunExecutor


@dataclass
class Runtime:
    """What a worker process needs to execute runs."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    executor: RunExecutor


_dispatcher: list[Dispatcher] = []  # set once by the Celery app, inherited by forked children


def use_dispatcher(dispatcher: Dispatcher) -> None:
    """How executors of this process send runs waiting for a concurrency key once a slot frees."""
    _dispatcher[:] = [dispatcher]
    if runtime.cache_info().currsize:
        runtime().executor.dispatcher = dispatcher


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """This process's runtime, built on first use."""
    settings = get_settings()
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    executor = RunExecutor(
        settings,
        sessions,
        worker_identity(),
        dispatcher=_dispatcher[0] if _dispatcher else None,
        keep_spare=settings.spare_worktree,
    )
    return Runtime(settings, engine, sessions, executor)


def reset_after_fork() -> None:
    """Forget the parent's connections and identity; a child builds its own."""
    if runtime.cache_info().currsize:
        runtime().engine.dispose(close=False)
    runtime.cache_clear()
