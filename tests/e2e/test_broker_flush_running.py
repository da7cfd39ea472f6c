"""Redis flushed while runs are running and others queued: every run completes, none runs twice.

With late acks, a running task's message sits in Redis's unacked hash; FLUSHDB deletes it with the
queued messages and kombu's queue bindings. The worker holding a run keeps its lease (PostgreSQL is
the record) and finishes it; the queued runs are re-sent from PostgreSQL and complete.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.constants import TASK_EXECUTE_RUN
from shared.db import transaction
from shared.models import Attempt, Phase, Run
from shared.queueing import celery_config
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import REDIS_BASE, wait_until
from tests.services import start_worker

pytestmark = pytest.mark.e2e
BROKER_DB = 14  # flushed by this test; no other test uses it (15: test_broker_loss, 13: bench)
RUNS = 5


def _drop_clients(broker: redis.Redis, db: int) -> int:
    """Close every other connection to Redis database db, as a Redis restart would."""
    me = broker.client_id()
    dropped = 0
    for client in broker.client_list():
        if int(client.get("db", -1)) == db and int(client["id"]) != me:
            dropped += int(broker.client_kill_filter(_id=int(client["id"])))
    return dropped


def test_runs_complete_once_after_redis_is_flushed_while_running_and_queued(
    settings: Settings,
    sessions: sessionmaker[Session],
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    own = settings.model_copy(
        update={
            "broker_url": f"{REDIS_BASE}/{BROKER_DB}",
            "queue": f"flush-running-{uuid.uuid4().hex[:8]}",
            "data_dir": tmp_path / "data",
        }
    )
    env = {"AUTOPACK_REQUEUE_AFTER_S": "1", "BROKER_URL": own.broker_url}
    broker = redis.Redis.from_url(own.broker_url)
    broker.flushdb()
    go = tmp_path / "go"
    counters = tmp_path / "counters"
    counters.mkdir()
    repo = register_repo()
    worker = start_worker(own, tmp_path / "worker-1.log", concurrency=2, env=env)
    restarted = None
    try:
        client = Celery("flush-running-client")
        client.conf.update(celery_config(own))
        run_ids = []
        for i in range(RUNS):
            spec = RunCreate.model_validate(
                {
                    "repo": repo,
                    "goal": f"survive a flush while running {i}",
                    "phases": [
                        {"id": "a", "run": f"echo a >> {counters / f'{i}.a'}"},
                        {
                            "id": "b",
                            "run": f"while [ ! -e {go} ]; do sleep 0.1; done; echo b >> {counters / f'{i}.b'}",
                            "timeout_s": 300,
                        },
                        {"id": "c", "run": f"echo c >> {counters / f'{i}.c'}"},
                    ],
                }
            )
            with transaction(sessions) as session:
                run_ids.append(service.submit(session, own, spec).run.id)
            client.send_task(TASK_EXECUTE_RUN, args=[run_ids[-1]], queue=own.queue)

        def running_b() -> set[str]:
            with sessions() as session:
                return set(
                    session.scalars(
                        select(Attempt.run_id)
                        .join(Phase, Phase.pk == Attempt.phase_pk)
                        .where(
                            Attempt.run_id.in_(run_ids),
                            Phase.phase_id == "b",
                            Attempt.status == "running",
                            Attempt.pgid.is_not(None),
                        )
                    )
                )

        # Both slots busy in the long phase, the other runs' messages waiting in the queue.
        running = wait_until(
            lambda: ids if len(ids := running_b()) == 2 else None,
            timeout=60,
            what="two runs to be in their long phase",
        )
        wait_until(
            lambda: broker.llen(own.queue) == RUNS - 2, timeout=30, what="the rest to be queued"
        )
        assert broker.hlen("unacked") == 2  # the running runs' messages, acked only at the end
        # Redis restarts empty, as the worker sees it: every message (queued and unacked) and
        # binding is gone, and every connection to this database is dropped.
        broker.flushdb()
        dropped = _drop_clients(broker, BROKER_DB)
        assert dropped > 0
        assert broker.llen(own.queue) == 0 and broker.hlen("unacked") == 0
        # The worker restarts too: a warm shutdown finishes the runs it holds and takes no more.
        os.kill(worker.process.pid, signal.SIGTERM)
        go.touch()

        def succeeded(ids: set[str] | list[str]) -> bool:
            with sessions() as session:
                return all(repository.get_run(session, r).status == "succeeded" for r in ids)

        # The running runs finish on the worker that holds their lease.
        wait_until(
            lambda: succeeded(running), timeout=60, interval=0.3, what="the running runs to end"
        )
        wait_until(lambda: worker.process.poll() is not None, timeout=60, what="the worker to exit")
        restarted = start_worker(own, tmp_path / "worker-2.log", concurrency=2, env=env)
        # The queued ones are re-sent from PostgreSQL and complete.
        wait_until(
            lambda: succeeded(run_ids), timeout=60, interval=0.3, what="the re-sent runs to end"
        )
        logs = worker.output() + restarted.output()
        assert "the broker had lost" in logs
    finally:
        worker.stop()
        if restarted is not None:
            restarted.stop()

    with sessions() as session:
        runs = [repository.get_run_detail(session, r) for r in run_ids]
        leases = {
            r.id: r.lease_token for r in session.scalars(select(Run).where(Run.id.in_(run_ids)))
        }
    for i, run in enumerate(runs):
        assert run.status == "succeeded", run.failure_reason
        assert {p.phase_id: [a.status for a in p.attempts] for p in run.phases} == {
            "a": ["succeeded"],
            "b": ["succeeded"],
            "c": ["succeeded"],
        }
        for phase in "abc":  # each phase's command ran exactly once
            assert (counters / f"{i}.{phase}").read_text() == f"{phase}\n"
        assert leases[run.id] == 1  # never taken over: the running ones kept their lease
