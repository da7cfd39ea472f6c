"""Long-polled status: the API answers when the run changes, woken by PostgreSQL notifications."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.notify import RunNotifications
from shared.db import transaction
from shared.models import Run
from shared.runs.states import RUN_TERMINAL
from shared.settings import Settings


def _created_run(client: httpx.Client, repo: str) -> str:
    response = client.post(
        "/runs",
        json={"repo": repo, "goal": "g", "start": False, "phases": [{"id": "a", "run": "true"}]},
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


def test_long_poll_answers_once_the_status_leaves_from_status(
    client: httpx.Client, api_url: str, api_key: str, register_repo: Callable[..., str]
) -> None:
    run_id = _created_run(client, register_repo())
    answer: dict[str, Any] = {}

    def poll() -> None:
        with httpx.Client(base_url=api_url, headers={"X-API-Key": api_key}, timeout=90) as c:
            answer.update(
                c.get(
                    f"/runs/{run_id}/status", params={"wait_s": 60, "from_status": "created"}
                ).json()
            )

    poller = threading.Thread(target=poll)
    poller.start()
    assert client.post(f"/runs/{run_id}/execute").status_code == 202
    poller.join(timeout=90)
    # The answer is the new status, not the one the poll started with.
    assert answer["id"] == run_id and answer["status"] != "created"


def test_long_poll_without_change_returns_current_status_after_wait(
    client: httpx.Client, register_repo: Callable[..., str]
) -> None:
    run_id = _created_run(client, register_repo())
    status = client.get(f"/runs/{run_id}/status", params={"wait_s": 0.3, "from_status": "created"})
    assert status.status_code == 200 and status.json()["status"] == "created"


@pytest.mark.parametrize("params", [{"wait_s": -1}, {"wait_s": 61}, {"from_status": "bogus"}])
def test_long_poll_rejects_bad_parameters(
    client: httpx.Client, register_repo: Callable[..., str], params: dict[str, Any]
) -> None:
    run_id = _created_run(client, register_repo())
    response = client.get(f"/runs/{run_id}/status", params=params)
    assert response.status_code == 422
    assert next(iter(params)) in response.text


def test_notifications_wake_a_waiter_on_any_status_write(
    settings: Settings,
    sessions: sessionmaker[Session],
    client: httpx.Client,
    register_repo: Callable[..., str],
) -> None:
    """The trigger announces status changes made by anyone: here a plain UPDATE, as a worker does."""
    run_id = _created_run(client, register_repo())
    assert settings.database_url is not None

    async def scenario() -> bool:
        async with _listening_hub(settings) as hub:
            with hub.subscribe(run_id) as changed:
                await asyncio.to_thread(_set_status, sessions, run_id, "cancelled")
                await asyncio.wait_for(changed.wait(), timeout=30)
                return changed.is_set()

    assert asyncio.run(scenario())


@contextlib.asynccontextmanager
async def _listening_hub(settings: Settings) -> AsyncIterator[RunNotifications]:
    """A started hub, once LISTEN is in place. Its recheck interval is far beyond any wait: only
    a notification can set an event."""
    hub = RunNotifications(settings.database_url or "", fallback_poll_s=3600)
    await hub.start()
    try:
        for _ in range(200):  # until LISTEN is in place
            if hub.listening:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the API never listened for run notifications")
        yield hub
    finally:
        await hub.stop()


def test_a_waiter_is_woken_only_by_a_status_that_answers_it(
    settings: Settings,
    sessions: sessionmaker[Session],
    client: httpx.Client,
    register_repo: Callable[..., str],
) -> None:
    """The notification carries the new status: a run starting does not wake a wait for its end."""
    run_id = _created_run(client, register_repo())

    async def scenario() -> tuple[bool, bool, bool]:
        async with _listening_hub(settings) as hub:
            with (
                hub.subscribe(run_id, lambda status: status in RUN_TERMINAL) as for_end,
                hub.subscribe(run_id) as for_any,
            ):
                await asyncio.to_thread(_set_status, sessions, run_id, "running")
                await asyncio.wait_for(for_any.wait(), timeout=30)
                # Both waiters were offered the same notification; only one took it.
                woken_by_running = for_end.is_set()
                await asyncio.to_thread(_set_status, sessions, run_id, "succeeded")
                await asyncio.wait_for(for_end.wait(), timeout=30)
                return woken_by_running, for_end.is_set(), for_any.is_set()

    assert asyncio.run(scenario()) == (False, True, True)


def test_a_notification_without_a_status_wakes_every_waiter(
    settings: Settings, client: httpx.Client, register_repo: Callable[..., str], pg_url: str
) -> None:
    """A bare run id (the trigger of an API older than migration 0013) means "re-read the run"."""
    run_id = _created_run(client, register_repo())

    async def scenario() -> bool:
        async with _listening_hub(settings) as hub:
            with hub.subscribe(run_id, lambda status: status in RUN_TERMINAL) as for_end:
                await asyncio.to_thread(_notify, pg_url, run_id)
                await asyncio.wait_for(for_end.wait(), timeout=30)
                return for_end.is_set()

    assert asyncio.run(scenario())


def _notify(pg_url: str, payload: str) -> None:
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute("SELECT pg_notify('autopack_runs', %s)", (payload,))


def _set_status(sessions: sessionmaker[Session], run_id: str, status: str) -> None:
    with transaction(sessions) as session:
        session.execute(update(Run).where(Run.id == run_id).values(status=status))
