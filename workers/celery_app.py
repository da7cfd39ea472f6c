"""The Celery app of the workers: one task, `runs.execute(run_id)`, and process hooks."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from shared.constants import TASK_EXECUTE_RUN
from shared.logs import configure_logging
from shared.queueing import celery_config
from shared.settings import Settings
from workers import runtime as runtime_module
from workers.sweeper import Sweeper, collect_orphans

logger = logging.getLogger(__name__)


class CeleryDispatcher:
    """Enqueues runs by task name on this app's broker."""

    def __init__(self, app: Celery, queue: str) -> None:
        self.app, self.queue = app, queue

    def enqueue_run(self, run_id: str) -> None:
        """Send `runs.execute(run_id)`."""
        self.app.send_task(TASK_EXECUTE_RUN, args=[run_id], queue=self.queue)


def create_celery(settings: Settings) -> Celery:
    """A configured worker app with the task registered."""
    app = Celery("autopack")
    app.conf.update(celery_config(settings))

    @app.task(name=TASK_EXECUTE_RUN, ignore_result=True)  # type: ignore[untyped-decorator]
    def execute_run(run_id: str) -> str | None:
        """Execute a run if this delivery wins its lease."""
        return runtime_module.runtime().executor.execute(run_id)

    sweeper_holder: dict[str, Sweeper] = {}

    def _child_init(**_: Any) -> None:
        runtime_module.reset_after_fork()
        configure_logging(settings.log_level, settings.log_json)

    def _ready(**_: Any) -> None:
        rt = runtime_module.runtime()
        collect_orphans(rt.sessions, settings)
        sweeper = Sweeper(rt.sessions, CeleryDispatcher(app, settings.queue), settings)
        sweeper.start()
        sweeper_holder["sweeper"] = sweeper

    def _shutdown(**_: Any) -> None:
        if "sweeper" in sweeper_holder:
            sweeper_holder["sweeper"].stop()

    signals.worker_process_init.connect(_child_init, weak=False)
    signals.worker_ready.connect(_ready, weak=False)
    signals.worker_shutdown.connect(_shutdown, weak=False)
    return app
