"""PostgreSQL is the record: runs whose messages a flushed Redis lost still complete."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.constants import TASK_EXECUTE_RUN
from shared.db import transaction
from shared.queueing import celery_config
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import REDIS_BASE, wait_until
from tests.services import start_worker

pytestmark = pytest.mark.e2e
BROKER_DB = 15  # flushed by this test; no other test uses it


def test_runs_complete_after_redis_is_flushed_while_they_are_queued(
    settings: Settings,
    engine: Engine,
    sessions: sessionmaker[Session],
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    own = settings.model_copy(
        update={"broker_url": f"{REDIS_BASE}/{BROKER_DB}", "queue": f"flush-{uuid.uuid4().hex[:8]}"}
    )
    repo = register_repo()
    client = Celery("flush-client")
    client.conf.update(celery_config(own))
    run_ids = []
    for i in range(3):
        spec = RunCreate.model_validate(
            {
                "repo": repo,
                "goal": f"survive a flush {i}",
                "phases": [{"id": "a", "run": f"echo {i} > out.txt"}],
            }
        )
        with transaction(sessions) as session:
            run_ids.append(service.submit(session, own, spec).run.id)
        client.send_task(TASK_EXECUTE_RUN, args=[run_ids[-1]], queue=own.queue)
    broker = redis.Redis.from_url(own.broker_url)
    assert broker.llen(own.queue) == 3
    broker.flushdb()  # the broker forgets every message
    assert broker.llen(own.queue) == 0

    worker = start_worker(
        own, tmp_path / "w.log", env={"AUTOPACK_REQUEUE_AFTER_S": "1", "BROKER_URL": own.broker_url}
    )
    try:

        def all_done() -> bool:
            with sessions() as session:
                return all(repository.get_run(session, r).status == "succeeded" for r in run_ids)

        wait_until(all_done, timeout=60, interval=0.3, what="the re-sent runs to complete")
        assert "the broker had lost 3 queued run(s)" in worker.output()
    finally:
        worker.stop()
