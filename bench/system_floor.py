"""The dispatch floor of `bench.system`: a bare Celery app with one no-op task.

Started as its own worker process by the benchmark:

    BENCH_FLOOR_BROKER=redis://127.0.0.1:6379/13 BENCH_FLOOR_QUEUE=q \
        python -m celery -A bench.system_floor worker --concurrency 1 --pool prefork -Q q

The same Redis database carries the message and the result (Redis result backend), so the
client's send -> result round trip is the cheapest Celery dispatch on this machine.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

NOOP_TASK = "bench.floor.noop"


def make_app(broker_url: str, queue: str) -> Celery:
    """A Celery app on broker_url with a Redis result backend; JSON, late acks, prefetch 1."""
    app = Celery("bench-floor")
    app.conf.update(
        broker_url=broker_url,
        result_backend=broker_url,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue,
        result_expires=600,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=NOOP_TASK)  # type: ignore[untyped-decorator]
    def noop() -> str:
        """Do nothing; the result is the round trip's end."""
        return "ok"

    return app


def _from_env() -> Any:
    return make_app(
        os.environ.get("BENCH_FLOOR_BROKER", "redis://127.0.0.1:6379/13"),
        os.environ.get("BENCH_FLOOR_QUEUE", "bench-floor"),
    )


app = _from_env()
