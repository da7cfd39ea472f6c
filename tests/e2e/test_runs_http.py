"""End to end over HTTP: a real API process, a real Celery worker, PostgreSQL, Redis and git."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from celery import Celery

from shared.constants import TASK_EXECUTE_RUN, run_branch
from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import Service, wait_for_status
from workers.workspace import Workspaces

pytestmark = pytest.mark.e2e
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def test_submit_executes_phases_and_exposes_result(
    client: httpx.Client, worker: Service, register_repo: Callable[..., str], settings: Settings
) -> None:
    repo = register_repo()
    response = client.post(
        "/runs",
        json={
            "repo": repo,
            "goal": "write two files",
            "phases": [
                {"id": "first", "run": ["echo one > one.txt"]},
                {"id": "second", "run": ["echo two > two.txt", "python3 app.py"]},
            ],
        },
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and [p["phase_id"] for p in body["phases"]] == [
        "first",
        "second",
    ]

    status = wait_for_status(client, body["id"], TERMINAL)
    assert status["status"] == "succeeded" and status["percent_complete"] == 100.0

    run = client.get(f"/runs/{body['id']}").json()
    assert [p["status"] for p in run["phases"]] == ["succeeded", "succeeded"]
    mirror = Workspaces(settings).mirror_path(repo)
    tree = subprocess.run(
        ["git", f"--git-dir={mirror}", "ls-tree", "--name-only", run_branch(body["id"])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"one.txt", "two.txt", "app.py"} <= set(tree)
    assert (
        run["result_commit"]
        == subprocess.run(
            ["git", f"--git-dir={mirror}", "rev-parse", run_branch(body["id"])],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    assert not Workspaces(settings).worktree_path(body["id"]).exists()
    log = client.get(f"/runs/{body['id']}/phases/second/attempts/1/log")
    assert log.status_code == 200 and log.headers["content-type"].startswith("text/plain")
    assert "$ python3 app.py\nhi\n" in log.text
    assert client.get(f"/runs/{body['id']}/phases/second/attempts/9/log").status_code == 404


def test_failing_phase_is_retried_then_run_fails(
    client: httpx.Client, worker: Service, register_repo: Callable[..., str]
) -> None:
    repo = register_repo()
    run_id = client.post(
        "/runs",
        json={
            "repo": repo,
            "goal": "fail",
            "phases": [
                {"id": "bad", "run": "echo 'fatal: nothing works' >&2; exit 4", "max_attempts": 2},
                {"id": "never", "run": "true"},
            ],
        },
    ).json()["id"]
    status = wait_for_status(client, run_id, TERMINAL)
    assert status["status"] == "failed" and "exit code 4" in str(status["failure_reason"])
    run = client.get(f"/runs/{run_id}").json()
    assert [p["status"] for p in run["phases"]] == ["failed", "skipped"]
    assert [a["status"] for a in run["phases"][0]["attempts"]] == ["failed", "failed"]
    for number in (1, 2):
        assert (
            "fatal: nothing works"
            in client.get(f"/runs/{run_id}/phases/bad/attempts/{number}/log").text
        )


def test_duplicate_delivery_runs_phases_once(
    client: httpx.Client,
    worker: Service,
    register_repo: Callable[..., str],
    celery_client: Celery,
    settings: Settings,
    tmp_path: Path,
) -> None:
    counter, started = tmp_path / "count", tmp_path / "started"
    run_id = client.post(
        "/runs",
        json={
            "repo": register_repo(),
            "goal": "count executions",
            "phases": [{"id": "count", "run": f"echo x >> {counter}; touch {started}; sleep 3"}],
        },
    ).json()["id"]
    wait_until(started.exists, timeout=60, what="phase to start")
    celery_client.send_task(TASK_EXECUTE_RUN, args=[run_id], queue=settings.queue)
    wait_until(
        lambda: f"run {run_id} is finished or held by a live worker" in worker.output(),
        timeout=30,
        what="duplicate delivery to be ignored",
    )
    assert wait_for_status(client, run_id, TERMINAL)["status"] == "succeeded"
    assert counter.read_text() == "x\n"
    run = client.get(f"/runs/{run_id}").json()
    assert len(run["phases"][0]["attempts"]) == 1


def test_created_run_starts_only_through_execute(
    client: httpx.Client, worker: Service, register_repo: Callable[..., str]
) -> None:
    run = client.post(
        "/runs",
        json={
            "repo": register_repo(),
            "goal": "later",
            "start": False,
            "phases": [{"id": "a", "run": "true"}],
        },
    ).json()
    assert run["status"] == "created"
    assert client.get(f"/runs/{run['id']}/status").json()["status"] == "created"
    started = client.post(f"/runs/{run['id']}/execute")
    assert started.status_code == 202 and started.json()["status"] in {
        "queued",
        "running",
        "succeeded",
    }
    assert wait_for_status(client, run["id"], TERMINAL)["status"] == "succeeded"
    assert client.post(f"/runs/{run['id']}/execute").status_code == 409


def test_plan_submitted_over_http_is_normalized_and_executed(
    client: httpx.Client, worker: Service, register_repo: Callable[..., str]
) -> None:
    response = client.post(
        "/runs",
        json={
            "repo": register_repo(),
            "goal": "plan it",
            "plan": "1. Write a file: `echo planned > planned.txt`\n2. Check it: `grep -q planned planned.txt`",
        },
    )
    assert response.status_code == 202 and response.json()["phases"] == []
    run_id = response.json()["id"]
    assert wait_for_status(client, run_id, TERMINAL)["status"] == "succeeded"
    run = client.get(f"/runs/{run_id}").json()
    assert [p["kind"] for p in run["phases"]] == ["shell", "shell"]
    assert (
        client.get(f"/dashboard/runs/{run_id}/phase6-stats").json()["plan_normalization_used"]
        is True
    )
    assert (
        client.post(
            "/runs",
            json={"repo": "x", "goal": "g", "plan": "1. x", "phases": [{"id": "a", "run": "x"}]},
        ).status_code
        == 422
    )
