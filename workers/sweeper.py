"""Re-delivers runs whose message is missing: never sent, or held by a worker that died."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.broker import queue_depths
from shared.db import transaction
from shared.dispatch import Dispatcher
from shared.logs import warn_failed
from shared.models import Phase, Run, utcnow
from shared.runs import concurrency, service
from shared.runs.states import PhaseStatus, RunStatus
from shared.settings import Settings
from workers.retention import clean_up
from workers.workspace import Workspaces

logger = logging.getLogger(__name__)


def sweep_once(
    sessions: sessionmaker[Session], dispatcher: Dispatcher, settings: Settings
) -> list[str]:
    """Enqueue runs with an expired lease or never enqueued; returns their ids.

    The conditional update on enqueued_at makes several sweepers on several hosts send each run once
    per interval; a duplicate message would be harmless anyway (the lease makes it a no-op).
    """
    now = utcnow()
    quiet = now - timedelta(seconds=settings.sweep_interval_s)
    due = or_(
        and_(Run.status == RunStatus.RUNNING, Run.lease_expires_at < now),
        and_(Run.status == RunStatus.QUEUED, Run.enqueued_at.is_(None), Run.created_at < quiet),
    )
    sent = []
    with transaction(sessions) as session:
        candidates = list(session.execute(select(Run.id, Run.queue).where(due).limit(500)).tuples())
    for run_id, queue in candidates:
        with transaction(sessions) as session:
            claimed = session.execute(
                update(Run)
                .where(
                    Run.id == run_id, due, or_(Run.enqueued_at.is_(None), Run.enqueued_at < quiet)
                )
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
        if claimed:
            dispatcher.enqueue_run(run_id, queue)
            sent.append(run_id)
    if sent:
        logger.info("re-enqueued %d run(s): %s", len(sent), ", ".join(sent))
    return sent


def requeue_lost_messages(
    sessions: sessionmaker[Session],
    dispatcher: Dispatcher,
    settings: Settings,
    depth: Callable[[str], int],
) -> list[str]:
    """Re-send queued runs whose message the broker lost (flushed Redis, purged queue).

    PostgreSQL is the record: when more runs have waited longer than requeue_after_s than the queue
    holds messages, some messages are gone; re-sending all of them is safe because a duplicate
    delivery finds the lease taken or the run finished and does nothing. Runs with a concurrency key
    are left to kick_waiting_runs: one waiting for a slot has, by design, no message.
    """
    cutoff = utcnow() - timedelta(seconds=settings.requeue_after_s)
    with sessions() as session:
        rows = session.execute(
            select(Run.id, Run.queue)
            .where(
                Run.status == RunStatus.QUEUED,
                Run.enqueued_at < cutoff,
                Run.concurrency_key.is_(None),
            )
            .order_by(Run.created_at)
            .limit(1000)
        ).tuples()
        waiting: dict[str, list[str]] = {}
        for run_id, queue in rows:
            waiting.setdefault(queue, []).append(run_id)
    now = utcnow()
    sent = []
    for queue, run_ids in waiting.items():
        if depth(queue) >= len(run_ids):
            continue
        for run_id in run_ids:
            with transaction(sessions) as session:
                claimed = session.execute(
                    update(Run)
                    .where(
                        Run.id == run_id, Run.status == RunStatus.QUEUED, Run.enqueued_at < cutoff
                    )
                    .values(enqueued_at=now)
                    .execution_options(synchronize_session=False)
                ).rowcount  # type: ignore[attr-defined]
            if claimed:
                dispatcher.enqueue_run(run_id, queue)
                sent.append(run_id)
    if sent:
        logger.warning(
            "the broker had lost %d queued run(s); re-sent: %s", len(sent), ", ".join(sent)
        )
    return sent


def kick_waiting_runs(
    sessions: sessionmaker[Session], dispatcher: Dispatcher, settings: Settings
) -> list[str]:
    """Fallback for concurrency keys: re-send queued runs with a key that could start but have not.

    A run waiting for a slot is sent again by the worker that frees one (concurrency.kick); if that
    worker died first, or the message was lost, the run would wait forever. This re-sends the
    admissible waiters (and waiters whose on_conflict must still be decided) whose last message is
    older than requeue_after_s. Waiters that cannot start yet need no message and are left alone. The
    conditional update on enqueued_at makes several sweepers send each run once; never-sent runs
    (enqueued_at NULL) are sweep_once's.
    """
    cutoff = utcnow() - timedelta(seconds=settings.requeue_after_s)
    with sessions() as session:
        keys = list(
            session.scalars(
                select(Run.concurrency_key)
                .where(Run.status == RunStatus.QUEUED, Run.concurrency_key.is_not(None))
                .distinct()
                .limit(500)
            )
        )
    sent = []
    for key in keys:
        if key is None:
            continue
        with sessions() as session:
            due = [
                w
                for w in concurrency.waiters(session, key)
                if (w.admissible or w.on_conflict != concurrency.QUEUE)
                and w.enqueued_at is not None
                and w.enqueued_at < cutoff
            ]
        for waiter in due:
            with transaction(sessions) as session:
                claimed = session.execute(
                    update(Run)
                    .where(
                        Run.id == waiter.run_id,
                        Run.status == RunStatus.QUEUED,
                        Run.enqueued_at < cutoff,
                    )
                    .values(enqueued_at=utcnow())
                    .execution_options(synchronize_session=False)
                ).rowcount  # type: ignore[attr-defined]
            if claimed:
                dispatcher.enqueue_run(waiter.run_id, waiter.queue)
                sent.append(waiter.run_id)
    if sent:
        logger.info(
            "re-sent %d run(s) waiting for a concurrency key: %s", len(sent), ", ".join(sent)
        )
    return sent


def finish_abandoned_cancellations(sessions: sessionmaker[Session]) -> list[str]:
    """Runs asked to cancel whose worker died: nothing runs them any more, so they end cancelled."""
    now = utcnow()
    with transaction(sessions) as session:
        ids = list(
            session.scalars(
                update(Run)
                .where(
                    Run.status == RunStatus.CANCELLING,
                    or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now),
                )
                .values(
                    status=RunStatus.CANCELLED,
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    failure_reason="cancelled by request (its worker was gone)",
                )
                .returning(Run.id)
            )
        )
        if ids:
            session.execute(
                update(Phase)
                .where(
                    Phase.run_id.in_(ids),
                    Phase.status.in_([PhaseStatus.PENDING, PhaseStatus.RUNNING]),
                )
                .values(status=PhaseStatus.CANCELLED, finished_at=now)
            )
    if ids:
        logger.info("finished abandoned cancellation of %s", ", ".join(ids))
    return ids


def active_run_ids(sessions: sessionmaker[Session]) -> set[str]:
    """Runs that some live worker may be executing right now."""
    with sessions() as session:
        rows = session.scalars(
            select(Run.id).where(
                Run.status.in_([RunStatus.RUNNING, RunStatus.CANCELLING]),
                Run.lease_expires_at >= utcnow(),
            )
        )
        return set(rows)


def collect_orphans(sessions: sessionmaker[Session], settings: Settings) -> list[str]:
    """At start-up: remove worktrees of runs no longer running, prune mirrors."""
    return Workspaces(settings).collect_orphans(active_run_ids(sessions))


class Sweeper:
    """Runs sweep_once every interval in a daemon thread of the worker's main process."""

    def __init__(
        self, sessions: sessionmaker[Session], dispatcher: Dispatcher, settings: Settings
    ) -> None:
        self.sessions, self.dispatcher, self.settings = sessions, dispatcher, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autopack-sweeper", daemon=True)
        self._next_cleanup = 0.0  # time.monotonic() of the next retention pass

    def _depth(self, queue: str) -> int:
        return queue_depths(self.settings.broker_url, [queue])[queue]

    def start(self) -> None:
        """Begin sweeping."""
        self._thread.start()

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stop.is_set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop, waiting (up to timeout_s) for a sweep in progress to finish.

        The thread is a daemon: a worker exiting mid-sweep would cut it between marking runs
        re-sent and sending them (they would then wait requeue_after_s for the next try) and
        lose its log lines.
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                sweep_once(self.sessions, self.dispatcher, self.settings)
                abandoned = finish_abandoned_cancellations(self.sessions)
                with self.sessions() as session:
                    freed = concurrency.keys_of(session, abandoned)
                for key in freed:  # their workers are gone: nobody else frees these slots
                    concurrency.kick(self.sessions, self.dispatcher, key)
                with transaction(self.sessions) as session:
                    expired = service.expire_queue_waits(session)
                if expired:
                    logger.info(
                        "runs not started within their max_queue_wait_s: %s", ", ".join(expired)
                    )
                requeue_lost_messages(self.sessions, self.dispatcher, self.settings, self._depth)
                kick_waiting_runs(self.sessions, self.dispatcher, self.settings)
            except Exception as error:
                warn_failed(logger, "sweep failed", error)
            self._clean_up_if_due()

    def _clean_up_if_due(self) -> None:
        """Retention and the disk budget, every retention_interval_s; a failure waits for the next."""
        if time.monotonic() < self._next_cleanup:
            return
        self._next_cleanup = time.monotonic() + self.settings.retention_interval_s
        try:
            clean_up(self.sessions, self.settings)
        except Exception as error:
            warn_failed(logger, "retention cleanup failed", error)
