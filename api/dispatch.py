"""The API's side of the queue: send `runs.execute` by name, without importing the workers."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.constants import TASK_EXECUTE_RUN
from shared.db import transaction
from shared.models import Run
from shared.queueing import celery_config
from shared.runs.states import RunStatus
from shared.settings import Settings

logger = logging.getLogger(__name__)


class CeleryDispatcher:
    """Enqueues runs on the configured broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = Celery("autopack-api")
        self.app.conf.update(celery_config(settings))

    def enqueue_run(self, run_id: str, queue: str | None = None) -> None:
        """Send `runs.execute(run_id)` to the run's queue."""
        self.app.send_task(TASK_EXECUTE_RUN, args=[run_id], queue=queue or self.settings.queue)

    def ping(self, timeout_s: float = 2.0) -> None:
        """Raise when the broker cannot be reached."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)


def enqueue_committed(
    sessions: sessionmaker[Session], dispatcher: CeleryDispatcher, run_id: str
) -> None:
    """Send a run whose transaction committed; if the broker is down, a worker's sweeper sends it later.

    The run was stored with enqueued_at set; only a failed send clears it, which marks the run as
    never sent for the sweeper (it re-sends such runs after one sweep interval).
    """
    try:
        dispatcher.enqueue_run(run_id)
    except Exception:
        logger.exception("enqueue of run %s failed; a worker's sweeper will send it", run_id)
        with transaction(sessions) as session:
            session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == RunStatus.QUEUED)
                .values(enqueued_at=None)
            )
