"""Concurrency keys against the real API and two Celery worker processes (four slots in all)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Attempt, Run
from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import Service, start_api, start_worker, wait_for_status

pytestmark = pytest.mark.e2e
RUNS, CLIENTS = 8, 4
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


@dataclass
class KeyStack:
    url: str
    workers: list[Service]


@pytest.fixture
def key_stack(settings: Settings, tmp_path: Path) -> Iterator[KeyStack]:
    """An API and two workers (concurrency 2 each) on a queue of this test's own."""
    own = settings.model_copy(update={"queue": f"keys-{uuid.uuid4().hex[:8]}"})
    workers = [start_worker(own, tmp_path / f"w{i}.log", concurrency=2) for i in range(2)]
    api, url = start_api(own, tmp_path / "api.log")
    try:
        yield KeyStack(url, workers)
    finally:
        api.stop()
        for worker in workers:
            worker.stop()


def test_runs_sharing_a_key_with_limit_one_never_overlap(
    key_stack: KeyStack,
    api_key: str,
    register_repo: Callable[..., str],
    sessions: sessionmaker[Session],
) -> None:
    repo, key = register_repo(), f"deploy-{uuid.uuid4().hex[:8]}"
    clients = [
        httpx.Client(base_url=key_stack.url, headers={"X-API-Key": api_key}, timeout=60)
        for _ in range(CLIENTS)
    ]

    def submit(index: int) -> str:
        response = clients[index % CLIENTS].post(
            "/runs",
            json={
                "repo": repo,
                "goal": f"exclusive {index}",
                "concurrency": {"key": key, "limit": 1},
                "phases": [{"id": "work", "run": f"echo start {index}; sleep 0.3; echo end"}],
            },
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    try:
        with ThreadPoolExecutor(max_workers=RUNS) as pool:
            run_ids = list(pool.map(submit, range(RUNS)))
    finally:
        for client in clients:
            client.close()

    def statuses() -> dict[str, str]:
        with sessions() as session:
            rows = session.execute(select(Run.id, Run.status).where(Run.id.in_(run_ids))).tuples()
            return {run_id: str(status) for run_id, status in rows}

    wait_until(
        lambda: set(statuses().values()) == {"succeeded"},
        timeout=180,
        interval=0.5,
        what=f"all {RUNS} runs sharing the key to succeed",
    )
    with sessions() as session:
        attempts = list(
            session.scalars(
                select(Attempt).where(Attempt.run_id.in_(run_ids)).order_by(Attempt.started_at)
            )
        )
        runs = list(
            session.scalars(select(Run).where(Run.id.in_(run_ids)).order_by(Run.started_at))
        )
    assert sorted(a.run_id for a in attempts) == sorted(run_ids)  # one attempt each
    for earlier, later in itertools.pairwise(attempts):
        assert earlier.finished_at is not None and earlier.finished_at <= later.started_at, (
            f"attempts of {earlier.run_id} and {later.run_id} overlapped"
        )
    for earlier_run, later_run in itertools.pairwise(runs):
        assert earlier_run.finished_at is not None and later_run.started_at is not None
        assert earlier_run.finished_at <= later_run.started_at, (
            f"{earlier_run.id} and {later_run.id} ran at the same time"
        )


def test_cancel_new_cancels_a_run_submitted_while_the_key_is_held(
    key_stack: KeyStack,
    api_key: str,
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    repo, key = register_repo(), f"release-{uuid.uuid4().hex[:8]}"
    started, release, second_ran = tmp_path / "started", tmp_path / "release", tmp_path / "ran"
    hold = f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done"
    policy = {"key": key, "limit": 1, "on_conflict": "cancel_new"}
    with httpx.Client(base_url=key_stack.url, headers={"X-API-Key": api_key}, timeout=60) as client:
        try:
            holder = client.post(
                "/runs",
                json={
                    "repo": repo,
                    "goal": "hold the key",
                    "concurrency": policy,
                    "phases": [{"id": "hold", "run": hold, "timeout_s": 120}],
                },
            ).json()["id"]
            wait_until(started.exists, timeout=60, what="the holder to start")
            new = client.post(
                "/runs",
                json={
                    "repo": repo,
                    "goal": "arrives while the key is held",
                    "concurrency": policy,
                    "phases": [{"id": "a", "run": f"touch {second_ran}"}],
                },
            ).json()["id"]
            status = wait_for_status(client, new, TERMINAL)
            assert status["status"] == "cancelled"
            assert key in str(status["failure_reason"]) and "cancel_new" in str(
                status["failure_reason"]
            )
            timeline = client.get(f"/runs/{new}/events").json()
            assert timeline[0]["kind"] == "run.created"
            assert timeline[0]["detail"]["concurrency_key"] == key
            assert (
                timeline[-1]["kind"] == "run.finished" and key in timeline[-1]["detail"]["reason"]
            )
            assert client.get(f"/runs/{new}").json()["phases"][0]["attempts"] == []
        finally:
            release.touch()
        assert wait_for_status(client, holder, TERMINAL)["status"] == "succeeded"
    assert not second_ran.exists()
