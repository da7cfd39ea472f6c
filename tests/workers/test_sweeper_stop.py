"""Stopping the sweeper waits for a sweep in progress (a worker shutting down must not cut it)."""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import CeleryDispatcher
from shared import repos
from shared.db import make_engine, make_session_factory, transaction
from shared.migrations import upgrade
from shared.models import Run, utcnow
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import fresh_database, wait_until
from workers.sweeper import Sweeper


class HeldDispatcher:
    """The real Celery dispatcher, with each send held until the test releases it."""

    def __init__(self, settings: Settings) -> None:
        self.real = CeleryDispatcher(settings)
        self.entered, self.release = threading.Event(), threading.Event()

    def enqueue_run(self, run_id: str, queue: str | None = None) -> None:
        self.entered.set()
        assert self.release.wait(30), "the test never released the send"
        self.real.enqueue_run(run_id, queue)


@pytest.fixture
def quiet(settings: Settings, session_tag: str) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """A database of its own: no other sweeper (the session's worker) may send this test's run."""
    with fresh_database(f"{session_tag}_sw_{uuid.uuid4().hex[:6]}") as url:
        own = settings.model_copy(
            update={
                "database_url": url,
                "queue": f"sw-{uuid.uuid4().hex[:8]}",
                "sweep_interval_s": 0.1,
            }
        )
        upgrade(own)
        engine = make_engine(own)
        yield own, make_session_factory(engine)
        engine.dispose()
        redis.Redis.from_url(own.broker_url).delete(own.queue)


def test_stop_waits_for_the_sweep_in_progress(
    quiet: tuple[Settings, sessionmaker[Session]],
    make_repo: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, sessions = quiet
    with transaction(sessions) as session:
        repos.add(session, "sw", str(make_repo()))
        spec = RunCreate.model_validate(
            {"repo": "sw", "goal": "g", "phases": [{"id": "a", "run": "true"}]}
        )
        run_id = service.submit(session, settings, spec).run.id
    with transaction(sessions) as session:  # stored but never sent, a while ago
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(enqueued_at=None, created_at=utcnow() - timedelta(minutes=5))
        )
    caplog.set_level(logging.INFO, logger="workers.sweeper")
    dispatcher = HeldDispatcher(settings)
    sweeper = Sweeper(sessions, dispatcher, settings)
    sweeper.start()
    assert dispatcher.entered.wait(30), "the sweeper never tried to send the run"

    seen_when_stopped: list[list[str]] = []

    def stop() -> None:
        sweeper.stop()
        seen_when_stopped.append([r.getMessage() for r in caplog.records])

    stopper = threading.Thread(target=stop)
    stopper.start()
    wait_until(lambda: sweeper.stopping, what="stop() to be called")
    dispatcher.release.set()
    stopper.join(30)
    assert not stopper.is_alive()
    # stop() returned only once the sweep had sent the run and said so
    assert [m for m in seen_when_stopped[0] if run_id in m] == [f"re-enqueued 1 run(s): {run_id}"]
    raw = redis.Redis.from_url(settings.broker_url).rpop(settings.queue)
    assert raw is not None
    assert json.loads(base64.b64decode(json.loads(raw)["body"]))[0] == [run_id]
