"""The API's side of the queue: send `runs.execute` by name, without importing the workers."""

from __future__ import annotations

from celery import Celery

from shared.constants import TASK_EXECUTE_RUN
from shared.queueing import celery_config
from shared.settings import Settings


class CeleryDispatcher:
    """Enqueues runs on the configured broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = Celery("autopack-api")
        self.app.conf.update(celery_config(settings))

    def enqueue_run(self, run_id: str) -> None:
        """Send `runs.execute(run_id)` to the run queue."""
        self.app.send_task(TASK_EXECUTE_RUN, args=[run_id], queue=self.settings.queue)

    def ping(self, timeout_s: float = 2.0) -> None:
        """Raise when the broker cannot be reached."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
