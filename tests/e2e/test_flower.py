"""Flower on the same broker shows each run's task, found through Flower's own HTTP API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import Service, free_port, service_env, start_service, wait_for_status

pytestmark = pytest.mark.e2e
AUTH = ("ops", "s3cret-flower")


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    service = start_service(
        ["flower", "--port", str(port)],
        service_env(settings, AUTOPACK_FLOWER_BASIC_AUTH=":".join(AUTH)),
        tmp_path / "flower.log",
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if service.process.poll() is not None:
            pytest.fail(f"flower exited: {service.output()[-2000:]}")
        try:
            return httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, timeout=30, what="Flower to answer /healthcheck")
    yield url
    service.stop()


def test_flower_shows_run_task_with_final_state(
    flower: str, client: httpx.Client, worker: Service, register_repo: Callable[..., str]
) -> None:
    assert httpx.get(f"{flower}/api/tasks").status_code == 401  # basic auth is on
    run_id = client.post(
        "/runs",
        json={
            "repo": register_repo(),
            "goal": "seen in flower",
            "phases": [{"id": "a", "run": "true"}],
        },
    ).json()["id"]
    assert wait_for_status(client, run_id, {"succeeded"})["status"] == "succeeded"

    def task_for_run() -> dict[str, object] | None:
        tasks = httpx.get(
            f"{flower}/api/tasks", params={"taskname": "runs.execute"}, auth=AUTH, timeout=5
        ).json()
        for task in tasks.values():
            if run_id in str(task.get("args")) and task.get("state") == "SUCCESS":
                return dict(task)
        return None

    task = wait_until(
        task_for_run, timeout=30, interval=0.3, what="Flower to record the run's task as SUCCESS"
    )
    assert task["name"] == "runs.execute"
