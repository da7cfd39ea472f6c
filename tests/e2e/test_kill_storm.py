"""kill -9 of workers mid-phase, again and again across 20 runs: every run still ends succeeded.

Two worker processes share a data directory; the test repeatedly SIGKILLs the whole process group
of a worker that is in the middle of a phase and starts a replacement. The attempt ledger must show
that no succeeded phase ran twice and that no two workers ever held a run at the same time.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.constants import TASK_EXECUTE_RUN
from shared.db import transaction
from shared.models import Attempt, Phase, Run
from shared.queueing import celery_config
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import Service, start_worker

pytestmark = pytest.mark.e2e
RUNS = 20
MAX_KILLS = 5
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")


def _pid_of(worker_identity: str) -> int | None:
    """The process id in a worker identity host:pid:nonce."""
    parts = worker_identity.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def test_kill9_storm_every_run_succeeds_once(
    settings: Settings,
    sessions: sessionmaker[Session],
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    own = settings.model_copy(
        update={"queue": f"storm-{uuid.uuid4().hex[:8]}", "data_dir": tmp_path / "data"}
    )
    # Messages a killed worker had taken are gone with it; queued runs are re-sent after 2 s.
    env = {"AUTOPACK_REQUEUE_AFTER_S": "2"}
    logs = iter(tmp_path / f"worker-{i}.log" for i in range(100))
    repo = register_repo()
    spec = RunCreate.model_validate(
        {
            "repo": repo,
            "goal": "survive a kill storm",
            "phases": [
                {"id": "a", "run": "echo a > a.txt"},
                {"id": "b", "run": "sleep 1.5; echo b > b.txt", "timeout_s": 120},
                {"id": "c", "run": "test -f a.txt && test -f b.txt"},
            ],
        }
    )
    workers = [start_worker(own, next(logs), concurrency=2, env=env) for _ in range(2)]
    everyone: list[Service] = list(workers)
    run_ids: list[str] = []
    client = Celery("storm-client")
    client.conf.update(celery_config(own))
    for _ in range(RUNS):
        with transaction(sessions) as session:
            run_ids.append(service.submit(session, own, spec).run.id)
        client.send_task(TASK_EXECUTE_RUN, args=[run_ids[-1]], queue=own.queue)

    def counts() -> tuple[int, int]:
        """(terminal runs, succeeded runs)."""
        with sessions() as session:
            rows = session.execute(
                select(Run.status, func.count()).where(Run.id.in_(run_ids)).group_by(Run.status)
            ).all()
        by_status = {status: int(n) for status, n in rows}
        return sum(by_status.get(s, 0) for s in TERMINAL), by_status.get("succeeded", 0)

    def all_terminal() -> bool:
        return counts()[0] == RUNS

    def mid_phase_worker() -> Service | None:
        """A live worker whose child is running the long phase of some run right now."""
        with sessions() as session:
            owners = session.scalars(
                select(Attempt.worker)
                .join(Phase, Phase.pk == Attempt.phase_pk)
                .where(
                    Attempt.run_id.in_(run_ids),
                    Attempt.status == "running",
                    Phase.phase_id == "b",
                )
            ).all()
        for owner in owners:
            pid = _pid_of(owner)
            if pid is None:
                continue
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                continue  # a worker killed earlier: its attempt waits to be recorded lost
            for worker in workers:
                if worker.process.pid == group and worker.process.poll() is None:
                    return worker
        return None

    kills = 0
    try:
        while kills < MAX_KILLS:
            step = wait_until(
                lambda: "done" if all_terminal() else mid_phase_worker(),
                timeout=60,
                interval=0.05,
                what="a worker in the middle of a phase",
            )
            if step == "done":
                break
            assert isinstance(step, Service)
            step.kill9()  # the whole process group: Celery's main process and its children
            kills += 1
            workers.remove(step)
            workers.append(start_worker(own, next(logs), concurrency=2, env=env))
            # Let the runs make progress before the next kill.
            succeeded_before = counts()[1]
            wait_until(
                lambda: all_terminal() or counts()[1] >= succeeded_before + 2,  # noqa: B023
                timeout=60,
                interval=0.2,
                what="runs to progress after a kill",
            )
        wait_until(all_terminal, timeout=90, interval=0.3, what="every run to end")
    finally:
        for worker in everyone + workers:
            worker.stop()

    with sessions() as session:
        runs = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(run_ids)))}
        attempts = session.scalars(
            select(Attempt).where(Attempt.run_id.in_(run_ids)).order_by(Attempt.started_at)
        ).all()
        phase_ids = dict(
            session.execute(select(Phase.pk, Phase.phase_id).where(Phase.run_id.in_(run_ids)))
            .tuples()
            .all()
        )

    assert {r.status for r in runs.values()} == {"succeeded"}, {
        r.id: r.failure_reason for r in runs.values() if r.status != "succeeded"
    }
    assert kills > 0
    statuses = [a.status for a in attempts]
    assert "lost" in statuses, "no kill landed in the middle of a phase"
    assert "running" not in statuses  # every interrupted attempt was recorded as lost
    succeeded: dict[int, int] = {}
    for attempt in attempts:
        if attempt.status == "succeeded":
            succeeded[attempt.phase_pk] = succeeded.get(attempt.phase_pk, 0) + 1
    # Every phase of every run succeeded, and exactly once: none that succeeded ran again.
    assert len(succeeded) == RUNS * 3 and set(succeeded.values()) == {1}, {
        phase_ids[pk]: n for pk, n in succeeded.items() if n != 1
    }
    by_run: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_run.setdefault(attempt.run_id, []).append(attempt)
    for run_id, history in by_run.items():
        holders: dict[int, str] = {}
        for attempt in history:
            # One lease token, one worker process: a lease is never shared.
            assert holders.setdefault(attempt.lease_token, attempt.worker) == attempt.worker
        for earlier, later in itertools.pairwise(history):
            assert earlier.finished_at is not None
            # Attempts of a run never overlap in time, and a later lease holder comes strictly
            # after the earlier one ended (lost attempts end when the next holder took over).
            assert earlier.finished_at <= later.started_at, (run_id, earlier.id, later.id)
            assert earlier.lease_token <= later.lease_token, (run_id, earlier.id, later.id)
        assert runs[run_id].lease_token >= max(holders)
