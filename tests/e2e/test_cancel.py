"""Cancellation against a real API and worker: queued runs never start; running phases are stopped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from shared.constants import TASK_EXECUTE_RUN
from shared.db import transaction
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import Service, wait_for_status
from workers.workspace import Workspaces

pytestmark = pytest.mark.e2e


def test_cancel_queued_run_never_starts(
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    sessions: sessionmaker[Session],
    settings: Settings,
    celery_client: Celery,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    spec = RunCreate.model_validate(
        {
            "repo": register_repo(),
            "goal": "never",
            "phases": [{"id": "a", "run": f"touch {marker}"}],
        }
    )
    with transaction(sessions) as session:  # stored as queued, not yet sent to the broker
        run_id = service.submit(session, settings, spec).run.id
    response = client.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert [p["status"] for p in response.json()["phases"]] == ["cancelled"]
    celery_client.send_task(
        TASK_EXECUTE_RUN, args=[run_id], queue=settings.queue
    )  # a late delivery
    wait_until(
        lambda: f"run {run_id} is finished or held by a live worker" in worker.output(),
        timeout=30,
        what="the late delivery to be ignored",
    )
    assert not marker.exists()
    assert client.get(f"/runs/{run_id}").json()["phases"][0]["attempts"] == []
    assert client.post(f"/runs/{run_id}/cancel").status_code == 409


def test_cancel_running_phase_escalates_signals_and_cleans_up(
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    started, trapped = tmp_path / "started", tmp_path / "trapped"
    stubborn = f"trap 'echo INT >> {trapped}' INT; trap 'echo TERM >> {trapped}' TERM; touch {started}; while true; do sleep 0.2; done"
    run_id = client.post(
        "/runs",
        json={
            "repo": register_repo(),
            "goal": "cancel me",
            "phases": [
                {"id": "stubborn", "run": stubborn, "timeout_s": 600},
                {"id": "later", "run": "true"},
            ],
        },
    ).json()["id"]
    wait_until(started.exists, timeout=60, what="the phase to start")
    response = client.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] in {"cancelling", "cancelled"}
    assert (
        wait_for_status(client, run_id, {"cancelled", "succeeded", "failed"}, timeout=60)["status"]
        == "cancelled"
    )

    run = client.get(f"/runs/{run_id}").json()
    assert [p["status"] for p in run["phases"]] == ["cancelled", "cancelled"]
    [attempt] = run["phases"][0]["attempts"]
    assert attempt["status"] == "cancelled" and "cancel requested" in attempt["failure_reason"]
    log = client.get(f"/runs/{run_id}/phases/stubborn/attempts/1/log").text
    assert "sent SIGINT, SIGTERM, SIGKILL to the process group" in log
    assert trapped.read_text().split() == ["INT", "TERM"]
    assert not Workspaces(settings).worktree_path(run_id).exists()
    assert client.post(f"/runs/{run_id}/cancel").status_code == 409


def test_cancel_unknown_run_is_404(client: httpx.Client) -> None:
    assert client.post("/runs/nope/cancel").status_code == 404
