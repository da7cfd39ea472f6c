"""kill -9 of a worker mid-phase: another worker takes the expired lease and resumes the run."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from shared.constants import TASK_EXECUTE_RUN
from shared.db import transaction
from shared.queueing import celery_config
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import start_worker

pytestmark = pytest.mark.e2e


def test_kill9_worker_mid_phase_resumes_on_other_worker(
    settings: Settings,
    sessions: sessionmaker[Session],
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(update={"queue": queue})
    first_runs, marker = tmp_path / "first-runs", tmp_path / "long-started"
    spec = RunCreate.model_validate(
        {
            "repo": register_repo(),
            "goal": "survive a crash",
            "phases": [
                {"id": "first", "run": f"echo run >> {first_runs}; echo one > one.txt"},
                {
                    "id": "long",
                    "run": 'if [ -e "$MARK" ]; then echo done > long.txt; else touch "$MARK"; sleep 300; fi',
                    "env": {"MARK": str(marker)},
                    "timeout_s": 600,
                },
                {"id": "last", "run": "test -f long.txt && test -f one.txt"},
            ],
        }
    )
    worker_a = start_worker(own, tmp_path / "a.log", concurrency=1)
    try:
        with transaction(sessions) as session:
            run_id = service.submit(session, own, spec).run.id
        client = Celery("crash-client")
        client.conf.update(celery_config(own))
        client.send_task(TASK_EXECUTE_RUN, args=[run_id], queue=queue)
        wait_until(marker.exists, timeout=60, what="the long phase to start on worker A")
        worker_a.kill9()
        worker_b = start_worker(own, tmp_path / "b.log", concurrency=1)
        try:

            def finished() -> bool:
                with sessions() as session:
                    return repository.get_run(session, run_id).status in {"succeeded", "failed"}

            wait_until(
                finished, timeout=90, interval=0.3, what="worker B to resume and finish the run"
            )
        finally:
            worker_b.stop()
    finally:
        worker_a.stop()

    with sessions() as session:
        run = repository.get_run_detail(session, run_id)
        assert run.status == "succeeded", run.failure_reason
        assert first_runs.read_text() == "run\n"  # the phase before the crash was not re-executed
        phases = {p.phase_id: p for p in run.phases}
        assert [a.status for a in phases["first"].attempts] == ["succeeded"]
        assert [a.status for a in phases["long"].attempts] == ["lost", "succeeded"]
        lost, resumed = phases["long"].attempts
        assert lost.worker != resumed.worker and lost.lease_token < resumed.lease_token
        assert run.lease_token == 2
