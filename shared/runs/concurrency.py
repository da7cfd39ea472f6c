"""Concurrency keys: at most `limit` runs with a key execute at once, across every worker.

Admission is decided when a worker takes a run's lease, in the same transaction, serialized per key:
on PostgreSQL by a transaction-scoped advisory lock on the key, on SQLite by its single write lock
(every transaction there begins with BEGIN IMMEDIATE). After the lock, each statement sees every
admission committed before, so two deliveries can never both take the last slot.

A run holds a slot of its key while it is `running` or `cancelling`, whether or not its lease is still
live: a run whose worker died keeps its slot until the sweeper's re-send lets another worker resume it
(a resumed run is never checked again), so a resumption can never push the key over its limit.

Runs waiting for a slot (on_conflict: queue) stay `queued` with no message in the broker and are
admitted first come, first served by (created_at, id): a run starts only if the slots held plus the
older runs still waiting leave room for it. Something must send them again once a slot may have freed:
`kick` does, after a run with the key ended and after a delivery that did not start its run; the
sweeper's fallback re-sends waiting runs that could start but have not for a while.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.dispatch import Dispatcher
from shared.models import Phase, Run, utcnow
from shared.runs.states import PhaseStatus, RunStatus

logger = logging.getLogger(__name__)

# The first half of the two-int advisory lock key, so ours never collide with other advisory locks.
ADVISORY_NAMESPACE = 0x41504B  # "APK"
OCCUPYING = (RunStatus.RUNNING, RunStatus.CANCELLING)
QUEUE, CANCEL_NEW, CANCEL_RUNNING = "queue", "cancel_new", "cancel_running"
MAX_LIMIT = 1000  # Concurrency.limit's upper bound: no more waiters than this can be admissible


@dataclass(frozen=True)
class Policy:
    """A run's `concurrency:` block as stored in its spec."""

    key: str
    limit: int = 1
    on_conflict: str = QUEUE

    @classmethod
    def of(cls, key: str, spec: Mapping[str, Any]) -> Policy:
        """The policy of a run with this key and stored spec (defaults when the block is missing)."""
        block = spec.get("concurrency") or {}
        return cls(
            key=key,
            limit=int(block.get("limit") or 1),
            on_conflict=str(block.get("on_conflict") or QUEUE),
        )


@dataclass(frozen=True)
class Admission:
    """What admission decided for one delivery of a run."""

    key: str | None
    # The caller may take the lease (which still decides for a run that is not queued).
    admitted: bool
    waiting: bool = False  # left queued for a slot (on_conflict: queue)
    cancelled: bool = False  # ended cancelled (on_conflict: cancel_new)
    superseded: tuple[str, ...] = ()  # asked to cancel to make room (on_conflict: cancel_running)
    reason: str | None = None
    holders: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Waiter:
    """A queued run with a key, as the kick and the sweeper see it."""

    run_id: str
    queue: str
    enqueued_at: datetime | None
    on_conflict: str
    admissible: bool


def lock_key(session: Session, key: str) -> None:
    """Serialize admissions of one key until the transaction ends (SQLite: its write lock already does)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(ADVISORY_NAMESPACE, func.hashtext(key))))


def holders_query(key: str, exclude: str | None = None) -> Select[tuple[str, str]]:
    """The runs holding a slot of key (ix_runs_concurrency_key_status_created_at finds them)."""
    query = select(Run.id, Run.status).where(Run.concurrency_key == key, Run.status.in_(OCCUPYING))
    if exclude is not None:
        query = query.where(Run.id != exclude)
    return query.order_by(Run.started_at, Run.id)


def holders(session: Session, key: str, exclude: str | None = None) -> list[tuple[str, str]]:
    """(run id, status) of the runs holding a slot of key, oldest start first."""
    rows = session.execute(holders_query(key, exclude)).tuples()
    return [(run_id, str(status)) for run_id, status in rows]


def _older_waiting(session: Session, key: str, run_id: str, created_at: datetime) -> int:
    """How many queued runs with key came before this one."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Run)
            .where(
                Run.concurrency_key == key,
                Run.status == RunStatus.QUEUED,
                Run.id != run_id,
                or_(
                    Run.created_at < created_at,
                    and_(Run.created_at == created_at, Run.id < run_id),
                ),
            )
        )
        or 0
    )


def admit(session: Session, run_id: str) -> Admission:
    """Decide whether this delivery may start the run; call in the transaction that takes the lease.

    A run without a key, or one that is not queued (a takeover of a run that already holds its slot,
    or a run that ended), is admitted: the lease decides. A queued run with a key is admitted when its
    key has room for it after the runs holding slots and the older runs waiting; otherwise its
    on_conflict applies: `queue` leaves it queued, `cancel_new` ends it cancelled, `cancel_running`
    asks the oldest running runs of the key to cancel and admits it.
    """
    key = session.scalar(select(Run.concurrency_key).where(Run.id == run_id))
    if key is None:
        return Admission(key=None, admitted=True)
    lock_key(session, key)
    # The row lock keeps the run queued (no cancel in between) until the lease is taken or not.
    row = session.execute(
        select(Run.status, Run.created_at, Run.spec).where(Run.id == run_id).with_for_update()
    ).one_or_none()
    if row is None or row.status != RunStatus.QUEUED:
        return Admission(key=key, admitted=True)
    policy = Policy.of(key, row.spec)
    held = holders(session, key, exclude=run_id)
    ahead = _older_waiting(session, key, run_id, row.created_at)
    names = tuple(run for run, _status in held)
    if len(held) + ahead < policy.limit:
        return Admission(key=key, admitted=True, holders=names)
    occupancy = f"{len(held)} of {policy.limit} slot(s) held" + (
        f" ({', '.join(names[:10])})" if names else ""
    )
    if ahead:
        occupancy += f", {ahead} older run(s) waiting"
    if policy.on_conflict == CANCEL_NEW:
        reason = f"concurrency key {key!r} is at its limit: {occupancy}; on_conflict: cancel_new"
        _cancel_new(session, run_id, reason)
        return Admission(key=key, admitted=False, cancelled=True, reason=reason, holders=names)
    if policy.on_conflict == CANCEL_RUNNING:
        running = [run for run, status in held if status == RunStatus.RUNNING]
        victims = running[: max(0, len(running) - policy.limit + 1)]
        _supersede(session, victims, run_id, key)
        return Admission(key=key, admitted=True, superseded=tuple(victims), holders=names)
    reason = f"waiting for concurrency key {key!r}: {occupancy}"
    _note_waiting(session, run_id, reason)
    return Admission(key=key, admitted=False, waiting=True, reason=reason, holders=names)


def _note_waiting(session: Session, run_id: str, reason: str) -> None:
    """Record why the run waits (shown by the API and the timeline); the first wait's time stays."""
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(
            waiting_since=func.coalesce(Run.waiting_since, utcnow()),
            waiting_reason=reason,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )


def _cancel_new(session: Session, run_id: str, reason: str) -> None:
    """End a queued run cancelled because its key was full."""
    now = utcnow()
    ended = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.QUEUED)
        .values(status=RunStatus.CANCELLED, failure_reason=reason, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if ended:
        session.execute(
            update(Phase)
            .where(Phase.run_id == run_id, Phase.status == PhaseStatus.PENDING)
            .values(status=PhaseStatus.CANCELLED, finished_at=now, failure_reason=reason)
            .execution_options(synchronize_session=False)
        )


def _supersede(session: Session, victims: Iterable[str], run_id: str, key: str) -> None:
    """Ask running runs to cancel (their workers notice it at the next heartbeat), naming the cause.

    The reason is written now; the worker that finishes the cancellation keeps it.
    """
    ids = list(victims)
    if not ids:
        return
    session.execute(
        update(Run)
        .where(Run.id.in_(ids), Run.status == RunStatus.RUNNING)
        .values(
            status=RunStatus.CANCELLING,
            cancel_requested=True,
            failure_reason=f"cancelled: superseded by run {run_id} on concurrency key {key!r} "
            "(on_conflict: cancel_running)",
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )


def waiters(session: Session, key: str) -> list[Waiter]:
    """The queued runs of key in admission order, each marked whether it could start now.

    The i-th waiter could start when the slots held plus the i waiters before it leave room under
    its own limit (the same rule `admit` applies); the first that could not ends the admissible ones.
    """
    # One statement, so the slots held and the queue come from the same snapshot: read apart, a
    # run taking its lease in between counted in neither, and one run too many was sent.
    rows = session.execute(waiters_query(key)).tuples()
    found: list[Waiter] = []
    open_line = True
    for position, (run_id, queue, enqueued_at, limit, on_conflict, held) in enumerate(rows):
        open_line = open_line and held + position < (limit or 1)
        found.append(Waiter(run_id, queue, enqueued_at, on_conflict or QUEUE, open_line))
    return found


def waiters_query(key: str) -> Select[tuple[str, str, datetime | None, int, str, int]]:
    """The queued runs of key in admission order, with what `waiters` needs of each and the
    number of slots held (the same on every row)."""
    held = (
        select(func.count())
        .select_from(Run)
        .where(Run.concurrency_key == key, Run.status.in_(OCCUPYING))
        .scalar_subquery()
    )
    return (
        select(
            Run.id,
            Run.queue,
            Run.enqueued_at,
            Run.spec[("concurrency", "limit")].as_integer(),
            Run.spec[("concurrency", "on_conflict")].as_string(),
            held,
        )
        .where(Run.concurrency_key == key, Run.status == RunStatus.QUEUED)
        .order_by(Run.created_at, Run.id)
        .limit(MAX_LIMIT + 1)
    )


def kick(sessions: sessionmaker[Session], dispatcher: Dispatcher, key: str) -> list[str]:
    """Send the runs waiting for key that could start now; returns their ids.

    Called after a run with the key ended, or after a delivery that did not start its run. A
    duplicate message is harmless: admission or the lease turns it into a no-op.
    """
    with sessions() as session:
        ready = [w for w in waiters(session, key) if w.admissible]
    sent = []
    for waiter in ready:
        dispatcher.enqueue_run(waiter.run_id, waiter.queue)
        with transaction(sessions) as session:
            session.execute(
                update(Run)
                .where(Run.id == waiter.run_id, Run.status == RunStatus.QUEUED)
                .values(enqueued_at=utcnow())
                .execution_options(synchronize_session=False)
            )
        sent.append(waiter.run_id)
    if sent:
        logger.info("concurrency key %r has room: sent %s", key, ", ".join(sent))
    return sent


def keys_of(session: Session, run_ids: Iterable[str]) -> list[str]:
    """The distinct concurrency keys of these runs."""
    ids = list(run_ids)
    if not ids:
        return []
    return sorted(
        {
            key
            for key in session.scalars(
                select(Run.concurrency_key).where(Run.id.in_(ids), Run.concurrency_key.is_not(None))
            )
            if key is not None
        }
    )
