"""PostgreSQL unreachable during a run: the worker retries its writes, or the run is resumed.

The worker reaches PostgreSQL through a TCP proxy the test cuts (every connection reset, new ones
refused) while a phase runs, and restores; the API and the test use the database directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Attempt, Phase
from shared.runs import repository
from shared.settings import Settings
from tests.conftest import wait_until
from tests.faults import TcpProxy
from tests.services import Service, start_api, start_worker, wait_for_status

pytestmark = pytest.mark.e2e
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A cuttable proxy in front of the session database, and the database URL through it."""
    url = make_url(pg_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def outage_api(
    settings: Settings, api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, httpx.Client]]:
    """An API on a queue of this module's own (direct database URL), and a client of it."""
    own = settings.model_copy(update={"queue": f"pg-outage-{uuid.uuid4().hex[:8]}"})
    service, url = start_api(own, tmp_path_factory.mktemp("pg-outage-api") / "api.log")
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=30) as http:
            yield own, http
    finally:
        service.stop()


def _submit(http: httpx.Client, repo: str, tmp_path: Path) -> str:
    """A run whose second phase waits for the file `go` the test creates."""
    response = http.post(
        "/runs",
        json={
            "repo": repo,
            "goal": "survive a database outage",
            "phases": [
                {"id": "first", "run": f"echo run >> {tmp_path / 'first-runs'}; echo 1 > one.txt"},
                {
                    "id": "wait",
                    "run": f"while [ ! -e {tmp_path / 'go'} ]; do sleep 0.1; done; echo 2 > two.txt",
                    "timeout_s": 300,
                },
                {"id": "last", "run": "test -f one.txt && test -f two.txt"},
            ],
        },
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


def _waiting_phase_spawned(sessions: sessionmaker[Session], run_id: str) -> bool:
    """The `wait` phase's command runs and its process group is recorded (no write in flight)."""
    with sessions() as session:
        return (
            session.scalar(
                select(Attempt.id)
                .join(Phase, Phase.pk == Attempt.phase_pk)
                .where(
                    Attempt.run_id == run_id,
                    Phase.phase_id == "wait",
                    Attempt.status == "running",
                    Attempt.pgid.is_not(None),
                )
            )
            is not None
        )


def _in_log(worker: Service, text: str) -> bool:
    return text in worker.output()


def _attempts(sessions: sessionmaker[Session], run_id: str) -> tuple[Any, dict[str, list[str]]]:
    with sessions() as session:
        run = repository.get_run_detail(session, run_id)
        return run, {p.phase_id: [a.status for a in p.attempts] for p in run.phases}


def _cut_during_phase_two(
    outage_api: tuple[Settings, httpx.Client],
    pg_proxy: tuple[TcpProxy, str],
    sessions: sessionmaker[Session],
    repo: str,
    tmp_path: Path,
    **env: str,
) -> tuple[Service, str]:
    """A worker behind the proxy runs a run into phase 2; the database is then cut and, once the
    worker noticed, phase 2 is let finish while it is still unreachable."""
    own, http = outage_api
    proxy, proxied_url = pg_proxy
    worker = start_worker(
        own, tmp_path / "worker.log", concurrency=1, env={"DATABASE_URL": proxied_url, **env}
    )
    try:
        run_id = _submit(http, repo, tmp_path)
        wait_until(
            lambda: _waiting_phase_spawned(sessions, run_id), timeout=60, what="phase 2 to run"
        )
        assert proxy.cut() > 0  # the worker's pooled connections are reset
        wait_until(
            lambda: _in_log(worker, "lease renewal failed"),
            timeout=30,
            what="the worker to notice the outage",
        )
        (tmp_path / "go").touch()  # phase 2 ends while the database is unreachable
    except BaseException:
        worker.stop()
        raise
    return worker, run_id


def test_short_outage_mid_run_is_ridden_out_by_write_retries(
    outage_api: tuple[Settings, httpx.Client],
    pg_proxy: tuple[TcpProxy, str],
    sessions: sessionmaker[Session],
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    _, http = outage_api
    proxy, _ = pg_proxy
    # A lease long enough to outlast the outage; the retry budget is the default, min(30, ttl/2).
    worker, run_id = _cut_during_phase_two(
        outage_api, pg_proxy, sessions, register_repo(), tmp_path, AUTOPACK_LEASE_TTL_S="20"
    )
    try:
        wait_until(
            lambda: _in_log(worker, "database unreachable while writing"),
            timeout=30,
            what="the worker to retry writing the phase's outcome",
        )
        # The outage lasts through a number of refused reconnects (the worker's retries among them).
        wait_until(lambda: proxy.refused >= 10, timeout=30, what="reconnects to be refused")
        proxy.restore()
        status = wait_for_status(http, run_id, TERMINAL, timeout=60)
        log = worker.output()
    finally:
        worker.stop()

    run, attempts = _attempts(sessions, run_id)
    assert status["status"] == "succeeded", run.failure_reason
    assert attempts == {"first": ["succeeded"], "wait": ["succeeded"], "last": ["succeeded"]}
    assert (tmp_path / "first-runs").read_text() == "run\n"  # phase 1 ran once
    assert run.lease_token == 1  # never abandoned, never resumed
    assert proxy.refused > 0  # reconnects were refused during the outage
    assert log.count("database unreachable while") == 1  # one warning per outage, not per try
    assert "database reachable again" in log
    assert "abandoning the run" not in log


def test_outage_longer_than_retry_budget_resumes_the_run(
    outage_api: tuple[Settings, httpx.Client],
    pg_proxy: tuple[TcpProxy, str],
    sessions: sessionmaker[Session],
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    _, http = outage_api
    proxy, _ = pg_proxy
    worker, run_id = _cut_during_phase_two(
        outage_api, pg_proxy, sessions, register_repo(), tmp_path, AUTOPACK_DB_RETRY_S="1"
    )
    try:
        # The outage outlasts the retry budget: the worker gives up and leaves the run to be resumed.
        wait_until(
            lambda: _in_log(worker, "abandoning the run for resumption"),
            timeout=30,
            what="the worker to give up after its retry budget",
        )
        proxy.restore()
        status = wait_for_status(http, run_id, TERMINAL, timeout=60)
        log = worker.output()
    finally:
        worker.stop()

    run, attempts = _attempts(sessions, run_id)
    assert status["status"] == "succeeded", run.failure_reason
    # Phase 2's outcome never reached the record: resumed there, phases before it not re-run.
    assert attempts == {
        "first": ["succeeded"],
        "wait": ["lost", "succeeded"],
        "last": ["succeeded"],
    }
    assert (tmp_path / "first-runs").read_text() == "run\n"
    assert run.lease_token == 2  # resumed under a new lease after the old one expired
    assert "database unreachable while writing" in log
    assert "gave up writing" in log
