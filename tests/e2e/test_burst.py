"""A burst of concurrent submissions: idempotency keys hold under races and every run completes."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Run
from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import start_api, start_worker

pytestmark = pytest.mark.e2e
CLIENTS, RUNS = 20, 250  # 500 submissions: every id twice


@pytest.fixture
def burst_stack(settings: Settings, tmp_path: Path) -> Iterator[str]:
    own = settings.model_copy(update={"queue": f"burst-{uuid.uuid4().hex[:8]}"})
    worker = start_worker(own, tmp_path / "worker.log", concurrency=4)
    api, url = start_api(own, tmp_path / "api.log")
    try:
        yield url
    finally:
        api.stop()
        worker.stop()


def test_burst_from_concurrent_clients_accepts_each_run_once_and_completes_all(
    burst_stack: str,
    api_key: str,
    register_repo: Callable[..., str],
    sessions: sessionmaker[Session],
) -> None:
    repo, batch = register_repo(), uuid.uuid4().hex[:8]
    # Every run id is submitted twice, by different clients at nearly the same time.
    jobs = [(f"burst-{batch}-{i}", i % CLIENTS) for i in range(RUNS)] + [
        (f"burst-{batch}-{i}", (i + 7) % CLIENTS) for i in range(RUNS)
    ]
    clients = [
        httpx.Client(base_url=burst_stack, headers={"X-API-Key": api_key}, timeout=60)
        for _ in range(CLIENTS)
    ]

    def submit(job: tuple[str, int]) -> int:
        run_id, client = job
        spec = {
            "run_id": run_id,
            "repo": repo,
            "goal": "burst",
            "labels": {"batch": batch},
            "phases": [{"id": "a", "run": "true"}],
        }
        return clients[client].post("/runs", json=spec).status_code

    try:
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            codes = Counter(pool.map(submit, jobs))
    finally:
        for client in clients:
            client.close()
    assert codes == {202: RUNS, 200: RUNS}  # each id created once, the twin got the existing run

    def counts() -> dict[str, int]:
        with sessions() as session:
            rows = session.execute(
                select(Run.status, func.count())
                .where(Run.id.like(f"burst-{batch}-%"))
                .group_by(Run.status)
            ).all()
            return {str(status): int(count) for status, count in rows}

    wait_until(
        lambda: counts() == {"succeeded": RUNS},
        timeout=240,
        interval=1,
        what=f"all {RUNS} runs to succeed",
    )
