"""Pooled PostgreSQL connections: pinged before use only after being idle (real server, real
backends terminated)."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from shared.db import make_engine
from shared.settings import Settings
from tests.conftest import wait_until


def _pooled_backend(engine: Engine) -> int:
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    return int(pid)


def _terminate(pg_url: str, pid: int) -> None:
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        def gone() -> bool:
            row = admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            return row is None

        wait_until(gone, timeout=10, interval=0.02, what=f"backend {pid} to end")


def test_a_dead_connection_idle_past_the_threshold_is_replaced_before_use(
    settings: Settings, pg_url: str
) -> None:
    engine = make_engine(settings.model_copy(update={"db_ping_idle_s": 0.0}), pool_size=1)
    try:
        old = _pooled_backend(engine)
        _terminate(pg_url, old)
        assert _pooled_backend(engine) != old  # pinged, found dead, replaced: no error
    finally:
        engine.dispose()


def test_a_connection_used_moments_ago_is_not_pinged(settings: Settings, pg_url: str) -> None:
    engine = make_engine(settings.model_copy(update={"db_ping_idle_s": 3600.0}), pool_size=1)
    try:
        old = _pooled_backend(engine)
        _terminate(pg_url, old)
        with pytest.raises(OperationalError):  # no ping: the statement meets the dead connection
            _pooled_backend(engine)
        assert _pooled_backend(engine) != old  # and the pool replaced it for the next one
    finally:
        engine.dispose()
