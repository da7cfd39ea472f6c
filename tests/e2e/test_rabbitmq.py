"""RabbitMQ as the broker: the same API and worker, and queue depth read from it."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery
from sqlalchemy import Engine

from shared.broker import queue_depths
from shared.constants import TASK_EXECUTE_RUN
from shared.queueing import celery_config
from shared.settings import Settings
from tests.conftest import wait_until
from tests.services import start_api, start_worker, wait_for_status

pytestmark = pytest.mark.e2e
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def amqp_settings(settings: Settings) -> Settings:
    if not rabbitmq_up():
        pytest.skip(
            "RabbitMQ is not running on 127.0.0.1:5672 (.ci/services starts it when installed)"
        )
    return settings.model_copy(
        update={"broker_url": AMQP_URL, "queue": f"amqp-{uuid.uuid4().hex[:8]}"}
    )


@pytest.fixture
def amqp_stack(amqp_settings: Settings, engine: Engine, tmp_path: Path) -> Iterator[str]:
    worker = start_worker(amqp_settings, tmp_path / "worker.log", concurrency=1)
    api, url = start_api(amqp_settings, tmp_path / "api.log")
    try:
        yield url
    finally:
        api.stop()
        worker.stop()


def test_run_executes_over_rabbitmq(
    amqp_stack: str, api_key: str, register_repo: Callable[..., str]
) -> None:
    with httpx.Client(base_url=amqp_stack, headers={"X-API-Key": api_key}, timeout=30) as client:
        assert client.get("/readyz").json()["broker"] == "ok"
        run_id = client.post(
            "/runs",
            json={
                "repo": register_repo(),
                "goal": "over amqp",
                "phases": [{"id": "a", "run": "echo amqp > a.txt"}],
            },
        ).json()["id"]
        assert wait_for_status(client, run_id, {"succeeded", "failed"})["status"] == "succeeded"


def test_queue_depth_is_read_from_rabbitmq(amqp_settings: Settings) -> None:
    client = Celery("amqp-depth")
    client.conf.update(celery_config(amqp_settings))
    for i in range(3):
        client.send_task(TASK_EXECUTE_RUN, args=[f"nobody-consumes-{i}"], queue=amqp_settings.queue)
    try:
        # Publishes are not confirmed: RabbitMQ routes them shortly after send_task returns.
        expected = {amqp_settings.queue: 3, "no-such-queue-here": 0}
        wait_until(
            lambda: queue_depths(AMQP_URL, list(expected)) == expected,
            timeout=15,
            what="RabbitMQ to report 3 waiting messages",
        )
    finally:
        with client.connection_for_write() as connection:
            connection.default_channel.queue_delete(amqp_settings.queue)
