"""Per-process state of a worker: engine, sessions and executor, rebuilt after fork."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.settings import Settings, get_settings
from workers.executor import RunExecutor, worker_identity


@dataclass
class Runtime:
    """What a worker process needs to execute runs."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    executor: RunExecutor


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """This process's runtime, built on first use."""
    settings = get_settings()
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    return Runtime(settings, engine, sessions, RunExecutor(settings, sessions, worker_identity()))


def reset_after_fork() -> None:
    """Forget the parent's connections and identity; a child builds its own."""
    if runtime.cache_info().currsize:
        runtime().engine.dispose(close=False)
    runtime.cache_clear()
