"""Wake long-polling requests when a run's status changes (PostgreSQL LISTEN/NOTIFY).

The `autopack_runs` channel is fed by a trigger on `runs.status` (migrations 0010 and 0013), so
every writer is covered. Its payload is "<run id> <new status>". One connection per API process
listens; requests wait on an asyncio.Event per run, set only when the new status answers them
(a run starting does not wake a request waiting for its end).

The same connection listens on `autopack_api_keys` (migration 0014) for the key cache
(api/keycache.py): it is told of every change to the keys, and of the connection's state.

When notifications are unavailable (SQLite, or the listening connection is down) waiters simply
re-read the run every `fallback_poll_s`, so a lost notification delays an answer, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

import psycopg

from api.keycache import KeyCache

logger = logging.getLogger(__name__)

CHANNEL = "autopack_runs"
KEYS_CHANNEL = "autopack_api_keys"
# The listening connection's application_name (pg_stat_activity).
LISTENER_NAME = "autopack-api-listener"

# Whether a run's new status answers a waiter; every status does when none is given.
Settles = Callable[[str], bool]


def libpq_url(sqlalchemy_url: str) -> str | None:
    """The libpq form of a PostgreSQL SQLAlchemy URL; None for other databases."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        return None
    return f"postgresql://{rest}"


class RunNotifications:
    """Per-run wake-ups for the requests of this process (and what its key cache hears)."""

    def __init__(
        self, database_url: str, *, fallback_poll_s: float = 1.0, keys: KeyCache | None = None
    ) -> None:
        self.url = libpq_url(database_url)
        self.keys = keys
        self.listening = False
        self._waiters: dict[str, dict[asyncio.Event, Settles | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.fallback_poll_s = fallback_poll_s if self.url else 0.25

    @property
    def poll_interval_s(self) -> float:
        """How long a waiter sleeps between re-reads while nothing wakes it."""
        return self.fallback_poll_s if self.listening else min(self.fallback_poll_s, 0.25)

    async def start(self) -> None:
        """Begin listening (no-op without PostgreSQL)."""
        if self.url is not None:
            self._task = asyncio.create_task(self._listen(), name="autopack-run-notifications")

    async def stop(self) -> None:
        """Stop listening and wake every waiter."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._wake_all()

    @contextlib.contextmanager
    def subscribe(self, run_id: str, settles: Settles | None = None) -> Iterator[asyncio.Event]:
        """An event set when the run's status changes to one that settles(status) accepts, or to
        any status without settles (subscribe before re-reading the run).

        The event is also set whenever a change may have gone unseen (listening (re)started or
        lost, the API stopping) and by a notification without a status: re-read the run then.
        """
        event = asyncio.Event()
        self._waiters.setdefault(run_id, {})[event] = settles
        try:
            yield event
        finally:
            waiters = self._waiters.get(run_id)
            if waiters is not None:
                waiters.pop(event, None)
                if not waiters:
                    del self._waiters[run_id]

    def _notified(self, payload: str) -> None:
        """A notification: "<run id> <status>", or a bare run id (the trigger before 0013)."""
        run_id, _, status = payload.partition(" ")
        self._wake(run_id, status or None)

    def _wake(self, run_id: str, status: str | None = None) -> None:
        for event, settles in self._waiters.get(run_id, {}).items():
            if status is None or settles is None or settles(status):
                event.set()

    def _listening(self, live: bool) -> None:
        self.listening = live
        if self.keys is not None:
            self.keys.listening(live)

    def _wake_all(self) -> None:
        for run_id in list(self._waiters):
            self._wake(run_id)

    async def _listen(self) -> None:
        assert self.url is not None
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=10,
                    application_name=LISTENER_NAME,
                    # A connection that died silently is noticed in about 10 s, not hours.
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await conn.execute(f"LISTEN {KEYS_CHANNEL}")
                    self._listening(True)
                    delay = 0.5
                    # Changes made while we were not listening are caught by one re-read.
                    self._wake_all()
                    async for notify in conn.notifies():
                        if notify.channel == KEYS_CHANNEL:
                            if self.keys is not None:
                                self.keys.forget()
                        else:
                            self._notified(notify.payload)
            except asyncio.CancelledError:
                self._listening(False)
                raise
            except Exception as error:
                if self.listening:
                    logger.warning("run notifications lost (%s); waiters poll until back", error)
                self._listening(False)
                self._wake_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
