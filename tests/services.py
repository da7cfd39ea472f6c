"""Real processes for end-to-end tests: the API under uvicorn and Celery workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared import auth, repos
from shared.db import transaction
from shared.queueing import celery_config
from shared.settings import Settings
from tests.conftest import wait_until


def service_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment a service process reads its settings from."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.effective_database_url,
        "BROKER_URL": settings.broker_url,
        "AUTOPACK_QUEUE": settings.queue,
        "AUTOPACK_DATA_DIR": str(settings.data_dir),
        "AUTOPACK_LEASE_TTL_S": str(settings.lease_ttl_s),
        "AUTOPACK_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
        "AUTOPACK_SWEEP_INTERVAL_S": str(settings.sweep_interval_s),
        "AUTOPACK_KILL_GRACE_S": str(settings.kill_grace_s),
        "AUTOPACK_LOG_JSON": "true",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(overrides)
    return env


@dataclass
class Service:
    """A service process started by a test, with its log file."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def kill9(self) -> None:
        """Kill the whole process tree of the service at once, like a host crash."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_service(args: list[str], env: dict[str, str], log: Path) -> Service:
    """Start `python -m cli ARGS` in its own session, output to log."""
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return Service(process, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_api(settings: Settings, log: Path, **overrides: str) -> tuple[Service, str]:
    """Start `autopack api` on a free port and wait until it answers /healthz."""
    port = free_port()
    service = start_service(["api", "--port", str(port)], service_env(settings, **overrides), log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if service.process.poll() is not None:
            pytest.fail(f"API exited: {service.output()[-2000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, timeout=30, what="API to answer /healthz")
    return service, url


@pytest.fixture(scope="session")
def api_url(
    settings: Settings, engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real API process on a free port."""
    service, url = start_api(settings, tmp_path_factory.mktemp("api") / "api.log")
    yield url
    service.stop()


@pytest.fixture(scope="session")
def api_key(sessions: sessionmaker[Session]) -> str:
    """A key created the way `autopack keys create` does."""
    with transaction(sessions) as session:
        return auth.create_key(session, "e2e")[1]


@pytest.fixture
def client(api_url: str, api_key: str) -> Iterator[httpx.Client]:
    """An authenticated HTTP client of the API."""
    with httpx.Client(base_url=api_url, headers={"X-API-Key": api_key}, timeout=30) as http:
        yield http


def start_worker(
    settings: Settings,
    log: Path,
    *,
    concurrency: int = 2,
    data_dir: Path | None = None,
    queue: str | None = None,
    env: dict[str, str] | None = None,
    node: str | None = None,
) -> Service:
    """Start `autopack worker` (Celery node `node`, default random) and wait until it is ready."""
    overrides = dict(env or {})
    if data_dir is not None:
        overrides["AUTOPACK_DATA_DIR"] = str(data_dir)
    if queue is not None:
        overrides["AUTOPACK_QUEUE"] = queue
    service = start_service(
        [
            "worker",
            "--concurrency",
            str(concurrency),
            "--hostname",
            node or f"w-{uuid.uuid4().hex[:6]}@%h",
        ],
        service_env(settings, **overrides),
        log,
    )

    def ready() -> bool:
        if service.process.poll() is not None:
            pytest.fail(f"worker exited: {service.output()[-3000:]}")
        return " ready." in service.output()

    wait_until(ready, timeout=60, what="worker to be ready")
    return service


@pytest.fixture(scope="session")
def worker(
    settings: Settings, engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """One real Celery worker process for the session's queue."""
    service = start_worker(settings, tmp_path_factory.mktemp("worker") / "worker.log")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def celery_client(settings: Settings) -> Celery:
    """A Celery client for sending raw messages, as a broker redelivery would."""
    app = Celery("e2e-client")
    app.conf.update(celery_config(settings))
    return app


@pytest.fixture
def register_repo(
    sessions: sessionmaker[Session], make_repo: Callable[..., Path]
) -> Callable[..., str]:
    """Register a fresh git repository under a unique name; returns the name."""

    def register(files: dict[str, str] | None = None) -> str:
        origin = make_repo(
            files or {"README.md": "# e2e\n", "app.py": "print('hi')\n"},
            name=f"origin-{uuid.uuid4().hex[:6]}",
        )
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        with transaction(sessions) as session:
            repos.add(session, name, str(origin))
        return name

    return register


def wait_for_status(
    client: httpx.Client, run_id: str, statuses: set[str], timeout: float = 60
) -> dict[str, object]:
    """Poll GET /runs/{id}/status until the run reaches one of statuses."""

    def reached() -> dict[str, object] | None:
        body: dict[str, object] = client.get(f"/runs/{run_id}/status").json()
        return body if body.get("status") in statuses else None

    result: dict[str, object] = wait_until(
        reached, timeout=timeout, interval=0.2, what=f"run {run_id} to reach {statuses}"
    )
    return result
