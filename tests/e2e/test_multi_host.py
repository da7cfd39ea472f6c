"""Two "hosts": workers with separate data directories (own mirrors and worktrees), one PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.constants import TASK_EXECUTE_RUN
from shared.db import transaction
from shared.queueing import celery_config
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import start_worker
from workers.gitcmd import git

pytestmark = pytest.mark.e2e


def submit_all(
    sessions: sessionmaker[Session], settings: Settings, specs: list[RunCreate]
) -> list[str]:
    client = Celery("multi-host-client")
    client.conf.update(celery_config(settings))
    ids = []
    for spec in specs:
        with transaction(sessions) as session:
            ids.append(service.submit(session, settings, spec).run.id)
        client.send_task(TASK_EXECUTE_RUN, args=[ids[-1]], queue=settings.queue)
    return ids


def statuses(sessions: sessionmaker[Session], run_ids: list[str]) -> list[str]:
    with sessions() as session:
        return [repository.get_run(session, r).status for r in run_ids]


def test_batch_is_shared_by_two_hosts_and_all_succeed(
    settings: Settings,
    engine: Engine,
    sessions: sessionmaker[Session],
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    own = settings.model_copy(update={"queue": f"hosts-{uuid.uuid4().hex[:8]}"})
    repo = register_repo()
    hosts = {name: tmp_path / name for name in ("host-a", "host-b")}
    workers = [
        start_worker(own, tmp_path / f"{name}.log", concurrency=1, data_dir=path)
        for name, path in hosts.items()
    ]
    try:
        specs = [
            RunCreate.model_validate(
                {
                    "repo": repo,
                    "goal": f"batch {i}",
                    "phases": [{"id": "work", "run": f"echo {i} > out.txt && sleep 1"}],
                }
            )
            for i in range(6)
        ]
        run_ids = submit_all(sessions, own, specs)
        wait_until(
            lambda: all(s == "succeeded" for s in statuses(sessions, run_ids)),
            timeout=120,
            interval=0.3,
            what="the batch to finish",
        )
    finally:
        for worker in workers:
            worker.stop()
    executed = {
        name: {p.name for p in (path / "logs").iterdir()} if (path / "logs").exists() else set()
        for name, path in hosts.items()
    }
    assert executed["host-a"] and executed["host-b"], executed  # both hosts did work
    assert (
        executed["host-a"] | executed["host-b"] == set(run_ids)
        and not executed["host-a"] & executed["host-b"]
    )
    for path in hosts.values():
        assert (path / "mirrors" / f"{repo}.git").is_dir()  # each host has its own mirror


def test_run_resumes_on_other_host_from_pushed_checkpoint(
    settings: Settings,
    engine: Engine,
    sessions: sessionmaker[Session],
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    own = settings.model_copy(
        update={"queue": f"resume-{uuid.uuid4().hex[:8]}", "checkpoint_push": True}
    )
    first_runs, marker = tmp_path / "first-runs", tmp_path / "long-started"
    spec = RunCreate.model_validate(
        {
            "repo": register_repo(),
            "goal": "survive losing a host",
            "phases": [
                {"id": "first", "run": f"echo run >> {first_runs}; echo one > one.txt"},
                {
                    "id": "long",
                    "run": 'if [ -e "$MARK" ]; then echo done > long.txt; else touch "$MARK"; sleep 300; fi',
                    "env": {"MARK": str(marker)},
                    "timeout_s": 600,
                },
            ],
        }
    )
    env = {"AUTOPACK_CHECKPOINT_PUSH": "true"}
    host_a = start_worker(
        own, tmp_path / "a.log", concurrency=1, data_dir=tmp_path / "host-a", env=env
    )
    try:
        [run_id] = submit_all(sessions, own, [spec])
        wait_until(marker.exists, timeout=60, what="the long phase to start on host A")
        host_a.kill9()
        host_b = start_worker(
            own, tmp_path / "b.log", concurrency=1, data_dir=tmp_path / "host-b", env=env
        )
        try:
            wait_until(
                lambda: statuses(sessions, [run_id])[0] in {"succeeded", "failed"},
                timeout=90,
                interval=0.3,
                what="host B to resume the run",
            )
        finally:
            host_b.stop()
    finally:
        host_a.stop()
    with sessions() as session:
        run = repository.get_run_detail(session, run_id)
    assert run.status == "succeeded", run.failure_reason
    assert (
        first_runs.read_text() == "run\n"
    )  # the phase finished on host A was not re-run on host B
    assert [a.status for a in run.phases[1].attempts] == ["lost", "succeeded"]
    mirror_b = tmp_path / "host-b" / "mirrors" / f"{run.repo}.git"
    assert (
        git(["show", f"{run.result_commit}:one.txt"], git_dir=mirror_b) == "one\n"
    )  # host A's work, via the origin
