"""Worker liveness, stall detection and Prometheus metrics against real processes."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from celery import Celery
from sqlalchemy import Engine

from shared.constants import TASK_EXECUTE_RUN
from shared.models import utcnow
from shared.queueing import celery_config
from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import Service, start_worker, wait_for_status
from workers.liveness import EXIT_STALLED, Liveness

pytestmark = pytest.mark.e2e


def test_worker_registers_and_reports_consumption(
    client: httpx.Client, worker: Service, register_repo: Callable[..., str], settings: Settings
) -> None:
    run_id = client.post(
        "/runs", json={"repo": register_repo(), "goal": "g", "phases": [{"id": "a", "run": "true"}]}
    ).json()["id"]
    assert wait_for_status(client, run_id, {"succeeded"})["status"] == "succeeded"

    def ours() -> dict[str, object] | None:
        rows = [
            w
            for w in client.get("/workers").json()
            if settings.queue in w["queues"] and w["received_total"] >= 1
        ]
        return rows[0] if rows else None

    row = wait_until(ours, timeout=30, what="the worker's heartbeat to report a received task")
    assert row["status"] == "alive" and row["concurrency"] == 2 and row["host"]


def test_stalled_worker_exits_nonzero(settings: Settings, engine: Engine, tmp_path: Path) -> None:
    queue = f"stall-{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(update={"queue": queue})
    node = f"stall-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    service = start_worker(
        own,
        tmp_path / "w.log",
        concurrency=1,
        queue=queue,
        env={"AUTOPACK_WORKER_STALL_TIMEOUT_S": "2"},
        node=node,
    )
    try:
        client = Celery("stall-client")
        client.conf.update(celery_config(own))
        wait_until(
            lambda: client.control.ping(destination=[node], timeout=1),
            timeout=30,
            what="the worker to answer ping",
        )
        client.control.cancel_consumer(queue, destination=[node], reply=True, timeout=5)
        client.send_task(TASK_EXECUTE_RUN, args=["no-such-run"], queue=queue)
        wait_until(
            lambda: service.process.poll() is not None,
            timeout=60,
            interval=0.3,
            what="the stalled worker to exit",
        )
        assert service.process.returncode == EXIT_STALLED
        assert "worker stalled" in service.output()
    finally:
        service.stop()


def test_stall_check_needs_waiting_work_free_slots_and_quiet() -> None:
    liveness = Liveness.__new__(Liveness)
    liveness.settings = Settings(worker_stall_timeout_s=10)
    liveness.concurrency, liveness.started_at = 2, utcnow() - timedelta(minutes=5)
    liveness.last_received_at, liveness._waiting_since = None, None
    now = utcnow()
    assert not liveness.check_stall(waiting=0, active=0, now=now)
    assert not liveness.check_stall(waiting=3, active=0, now=now)  # starts the clock
    assert not liveness.check_stall(waiting=3, active=0, now=now + timedelta(seconds=5))
    assert liveness.check_stall(waiting=3, active=0, now=now + timedelta(seconds=11))
    assert not liveness.check_stall(
        waiting=3, active=2, now=now + timedelta(seconds=30)
    )  # busy, not stalled
    liveness.last_received_at = now + timedelta(seconds=29)
    assert not liveness.check_stall(waiting=3, active=0, now=now + timedelta(seconds=31))


def test_metrics_endpoint_exposes_queue_runs_and_workers(
    api_url: str,
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    settings: Settings,
) -> None:
    run_id = client.post(
        "/runs", json={"repo": register_repo(), "goal": "g", "phases": [{"id": "a", "run": "true"}]}
    ).json()["id"]
    wait_for_status(client, run_id, {"succeeded"})
    response = httpx.get(f"{api_url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert f'autopack_queue_depth{{queue="{settings.queue}"}}' in text
    assert "autopack_broker_up 1.0" in text
    assert 'autopack_runs{status="succeeded"}' in text
    assert 'autopack_attempts_total{status="succeeded"}' in text
    assert (
        "autopack_phase_duration_seconds_bucket" in text
        and "autopack_oldest_queued_run_age_seconds" in text
    )
    assert 'autopack_workers{status="alive"}' in text
