"""The Celery app of the workers: one task, `runs.execute(run_id)`, and process hooks."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.worker import state as worker_state

from shared.constants import TASK_EXECUTE_RUN
from shared.logs import configure_logging
from shared.queueing import celery_config
from shared.settings import Settings
from workers import runtime as runtime_module
from workers.liveness import EXIT_STALLED, Liveness
from workers.sweeper import Sweeper, collect_orphans

logger = logging.getLogger(__name__)


class CeleryDispatcher:
    """Enqueues runs by task name on this app's broker."""

    def __init__(self, app: Celery, queue: str) -> None:
        self.app, self.queue = app, queue

    def enqueue_run(self, run_id: str, queue: str | None = None) -> None:
        """Send `runs.execute(run_id)` to queue (default: this worker's)."""
        self.app.send_task(TASK_EXECUTE_RUN, args=[run_id], queue=queue or self.queue)


def _active_runs() -> list[str]:
    """Run ids of the tasks this worker is executing (tracked by Celery's main process)."""
    return sorted(
        str(request.args[0]) for request in list(worker_state.active_requests) if request.args
    )


def _request_exit() -> None:
    """Ask Celery for a warm shutdown with EXIT_STALLED (checked by its event loop)."""
    worker_state.should_stop = EXIT_STALLED


def create_celery(settings: Settings, queues: list[str] | None = None) -> Celery:
    """A configured worker app with the task registered."""
    app = Celery("autopack")
    app.conf.update(celery_config(settings))
    # Executors send runs waiting for a concurrency key through this app once a slot frees.
    runtime_module.use_dispatcher(CeleryDispatcher(app, settings.queue))

    @app.task(name=TASK_EXECUTE_RUN, ignore_result=True)  # type: ignore[untyped-decorator]
    def execute_run(run_id: str) -> str | None:
        """Execute a run if this delivery wins its lease."""
        return runtime_module.runtime().executor.execute(run_id)

    holder: dict[str, Any] = {}

    def _init(sender: Any = None, **_: Any) -> None:
        holder["node"] = getattr(sender, "hostname", None) or f"autopack-{os.getpid()}"
        holder["concurrency"] = int(getattr(sender, "concurrency", 1) or 1)

    def _received(**_: Any) -> None:
        if "liveness" in holder:
            holder["liveness"].task_received()

    def _child_init(**_: Any) -> None:
        runtime_module.reset_after_fork()
        configure_logging(settings.log_level, settings.log_json)

    def _ready(**_: Any) -> None:
        rt = runtime_module.runtime()
        collect_orphans(rt.sessions, settings)
        sweeper = Sweeper(rt.sessions, CeleryDispatcher(app, settings.queue), settings)
        sweeper.start()
        holder["sweeper"] = sweeper
        liveness = Liveness(
            rt.sessions,
            settings,
            node=holder.get("node") or f"autopack-{os.getpid()}",
            queues=list(queues or [settings.queue]),
            concurrency=holder.get("concurrency", 1),
            active_runs=_active_runs,
            on_stall=_request_exit,
        )
        liveness.start()
        holder["liveness"] = liveness

    def _shutdown(**_: Any) -> None:
        for name in ("sweeper", "liveness"):
            if name in holder:
                holder[name].stop()

    signals.worker_init.connect(_init, weak=False)
    signals.task_received.connect(_received, weak=False)
    signals.worker_process_init.connect(_child_init, weak=False)
    signals.worker_ready.connect(_ready, weak=False)
    signals.worker_shutdown.connect(_shutdown, weak=False)
    return app
