"""The API's key cache: keys are remembered only while every change to them is heard (real
PostgreSQL notifications), and forgotten on any change or when listening stops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import psycopg
from sqlalchemy.orm import Session, sessionmaker

from api.keycache import KeyCache
from api.notify import LISTENER_NAME, RunNotifications
from shared import auth
from shared.db import transaction
from shared.settings import Settings
from tests.conftest import wait_until

CALLER = auth.Caller("ci", frozenset({"read"}))
T = TypeVar("T")


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll predicate on the event loop (which delivers the notifications) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _with_hub(settings: Settings, keys: KeyCache, body: Callable[[], Awaitable[T]]) -> T:
    async def scenario() -> T:
        hub = RunNotifications(settings.database_url or "", fallback_poll_s=3600, keys=keys)
        await hub.start()
        try:
            await _until(lambda: hub.listening, "the API to listen")
            return await body()
        finally:
            await hub.stop()

    return asyncio.run(scenario())


def test_a_remembered_key_is_forgotten_on_any_change_to_the_keys(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with transaction(sessions) as session:
        row, _ = auth.create_key(session, "other")
    keys = KeyCache(ttl_s=3600)

    async def body() -> None:
        keys.remember("ap_x", CALLER, keys.generation)
        assert keys.get("ap_x") == CALLER
        # Another key revoked, by another process: every remembered key is forgotten.
        await asyncio.to_thread(_revoke, sessions, row.id)
        await _until(lambda: keys.get("ap_x") is None, "the change to be heard")

    _with_hub(settings, keys, body)


def test_keys_are_forgotten_when_the_listening_connection_is_lost(
    settings: Settings, pg_url: str
) -> None:
    keys = KeyCache(ttl_s=3600)

    async def body() -> bool:
        keys.remember("ap_x", CALLER, keys.generation)
        assert keys.get("ap_x") == CALLER
        await asyncio.to_thread(_terminate_listeners, pg_url)
        await _until(lambda: keys.get("ap_x") is None, "the loss to be noticed")
        await _until(lambda: keys.live, "listening again")
        keys.remember("ap_x", CALLER, keys.generation)
        return keys.get("ap_x") == CALLER

    assert _with_hub(settings, keys, body)


def test_nothing_is_remembered_unless_listening_with_a_time_limit() -> None:
    idle = KeyCache(ttl_s=3600)  # never told it listens: SQLite, or an outage
    idle.remember("ap_x", CALLER, idle.generation)
    assert idle.get("ap_x") is None
    off = KeyCache(ttl_s=0)  # AUTOPACK_API_KEY_CACHE_S=0
    off.listening(True)
    off.remember("ap_x", CALLER, off.generation)
    assert not off.live and off.get("ap_x") is None


def test_a_read_begun_before_a_change_is_not_remembered_after_it() -> None:
    keys = KeyCache(ttl_s=3600)
    keys.listening(True)
    before = keys.generation
    keys.forget()  # a change heard while the key was being read
    keys.remember("ap_x", CALLER, before)
    assert keys.get("ap_x") is None
    keys.remember("ap_x", CALLER, keys.generation)
    assert keys.get("ap_x") == CALLER


def test_a_remembered_key_expires() -> None:
    keys = KeyCache(ttl_s=0.05)
    keys.listening(True)
    keys.remember("ap_x", CALLER, keys.generation)
    assert keys.get("ap_x") == CALLER
    wait_until(lambda: keys.get("ap_x") is None, timeout=5, interval=0.01, what="expiry")


def test_a_key_revoked_through_the_api_is_refused_by_it_at_once(
    api_url: str, sessions: sessionmaker[Session]
) -> None:
    with transaction(sessions) as session:
        _, admin_key = auth.create_key(session, "admin", ["admin", "read"])
        row, key = auth.create_key(session, "short-lived")
    headers = {"X-API-Key": key}
    assert httpx.get(f"{api_url}/runs", headers=headers).status_code == 200
    assert httpx.get(f"{api_url}/runs", headers=headers).status_code == 200  # remembered
    revoked = httpx.delete(f"{api_url}/keys/{row.id}", headers={"X-API-Key": admin_key})
    assert revoked.status_code == 200
    assert httpx.get(f"{api_url}/runs", headers=headers).status_code == 401


def _revoke(sessions: sessionmaker[Session], key_id: int) -> None:
    with transaction(sessions) as session:
        auth.revoke(session, key_id)


def _terminate_listeners(pg_url: str) -> None:
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (LISTENER_NAME,),
        )
