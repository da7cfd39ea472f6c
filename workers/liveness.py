"""The worker's main-process heartbeat: registration, consumption, and stall detection.

Celery on Redis can stay up after a broker reconnect without consuming again. The heartbeat
notices it — messages wait in our queues, we have free slots, and nothing arrived for
worker_stall_timeout_s — and asks the worker to exit with EXIT_STALLED so a supervisor restarts it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from shared import workers_registry
from shared.broker import queue_depths
from shared.db import transaction
from shared.logs import warn_failed
from shared.models import utcnow
from shared.settings import Settings

logger = logging.getLogger(__name__)

EXIT_STALLED = 3


class Liveness:
    """Counts received tasks and heartbeats into PostgreSQL from a daemon thread."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        node: str,
        queues: list[str],
        concurrency: int,
        active_runs: Callable[[], list[str]],
        on_stall: Callable[[], None],
    ) -> None:
        self.sessions, self.settings, self.node, self.queues, self.concurrency = (
            sessions,
            settings,
            node,
            queues,
            concurrency,
        )
        self.active_runs, self.on_stall = active_runs, on_stall
        self.received_total = 0
        self.last_received_at: datetime | None = None
        self.started_at = utcnow()
        self.stalled_since: datetime | None = None
        self._waiting_since: datetime | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autopack-liveness", daemon=True)

    def task_received(self) -> None:
        """Called for every message this worker takes from the broker."""
        self.received_total += 1
        self.last_received_at = utcnow()

    def start(self) -> None:
        """Register and begin heartbeating."""
        with transaction(self.sessions) as session:
            workers_registry.register(
                session,
                node=self.node,
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=self.queues,
                concurrency=self.concurrency,
            )
        self._thread.start()

    def stop(self) -> None:
        """Stop heartbeating and record the shutdown."""
        self._stop.set()
        try:
            with transaction(self.sessions) as session:
                workers_registry.stopped(session, self.node)
        except Exception:
            logger.warning("could not record worker shutdown", exc_info=True)

    def check_stall(self, waiting: int, active: int, now: datetime) -> bool:
        """Whether the worker is stalled: work waits, slots are free, nothing arrived for too long."""
        if waiting == 0 or active >= self.concurrency:
            self._waiting_since = None
            return False
        self._waiting_since = self._waiting_since or now
        quiet_since = max(self._waiting_since, self.last_received_at or self.started_at)
        return now - quiet_since > timedelta(seconds=self.settings.worker_stall_timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                self._beat()
            except Exception as error:
                warn_failed(logger, "worker heartbeat failed", error)

    def _beat(self) -> None:
        active = self.active_runs()
        try:
            waiting = sum(queue_depths(self.settings.broker_url, self.queues).values())
        except Exception:
            waiting = 0  # a broker we cannot reach is Celery's reconnect to handle, not a stall
        now = utcnow()
        stalled = self.check_stall(waiting, len(active), now)
        if stalled and self.stalled_since is None:
            self.stalled_since = now
        with transaction(self.sessions) as session:
            workers_registry.beat(
                session,
                node=self.node,
                active_runs=active,
                received_total=self.received_total,
                last_received_at=self.last_received_at,
                stalled_since=self.stalled_since,
            )
        if stalled:
            logger.error(
                "worker stalled: %d message(s) wait in %s, %d of %d slots busy, nothing received for %.0fs; exiting with %d",
                waiting,
                ",".join(self.queues),
                len(active),
                self.concurrency,
                self.settings.worker_stall_timeout_s,
                EXIT_STALLED,
            )
            self._stop.set()
            self.on_stall()
