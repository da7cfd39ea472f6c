"""Fenced leases on runs: every write a worker makes is conditional on its token."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, func, or_, select, update
from sqlalchemy.orm import Session

from shared.errors import LeaseLost
from shared.models import Phase, Run, utcnow
from shared.runs.states import RunStatus
from workers import statements

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """This worker's claim on a run."""

    run_id: str
    owner: str
    token: int


def acquire(session: Session, run_id: str, owner: str, ttl_s: float) -> Lease | None:
    """Take a queued run, or one whose lease expired; None when someone else holds it or it ended.

    The first taker also stamps the run's started_at. One statement: the new token comes back
    with RETURNING (PostgreSQL, and SQLite since 3.35).
    """
    now = utcnow()
    token = session.execute(
        update(Run)
        .where(
            Run.id == run_id,
            or_(
                Run.status == RunStatus.QUEUED,
                (Run.status == RunStatus.RUNNING)
                & or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now),
            ),
        )
        .values(
            status=RunStatus.RUNNING,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=ttl_s),
            lease_token=Run.lease_token + 1,
            started_at=func.coalesce(Run.started_at, now),
            updated_at=now,
        )
        .returning(Run.lease_token)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if token is None:
        return None
    return Lease(run_id=run_id, owner=owner, token=token)


def acquire_plain(
    session: Session, run_id: str, owner: str, ttl_s: float
) -> tuple[Run, str | None] | None:
    """acquire() for a run with no concurrency key and no passed queue deadline, returning it
    and its repository's registered URL (None when the name is not registered).

    One statement (UPDATE ... RETURNING the row). None when the run is not such a run, or is held
    or ended: the caller then takes the general way (expire, admit, acquire). The Run returned
    is a read-only snapshot built from the row, outside the session (the ORM's loading would
    cost more than the statement).
    """
    now = utcnow()
    row = (
        session.connection()
        .execute(
            statements.ACQUIRE_PLAIN,
            {
                "p_run_id": run_id,
                "p_owner": owner,
                "p_expires": now + timedelta(seconds=ttl_s),
                "p_now": now,
            },
        )
        .one_or_none()
    )
    if row is None:
        return None
    values = row._asdict()
    url = values.pop(statements.ACQUIRED_REPO_URL)
    return Run(**values), url


def claim_plain_pg(
    connection: Connection, run_id: str, owner: str, ttl_s: float
) -> tuple[Run, str | None, list[Phase]] | None:
    """acquire_plain() with the run's phases, in one statement (PostgreSQL): the run, its
    repository's registered URL and its phases, all read-only snapshots outside any session.

    The phases come without attempts: the run's first lease has none; a takeover (a token
    above 1) must read them again, with their attempts, once it has ended the earlier holder's.
    """
    now = utcnow()
    rows = connection.execute(
        statements.CLAIM_PLAIN_PG,
        {
            "p_run_id": run_id,
            "p_owner": owner,
            "p_expires": now + timedelta(seconds=ttl_s),
            "p_now": now,
        },
    ).all()
    if not rows:
        return None
    first = rows[0]._mapping
    run = Run(**{column.name: first[column.name] for column in statements.runs.c})
    phase_columns = [(c.name, f"{statements.PHASE_PREFIX}{c.name}") for c in statements.phases.c]
    phases = [
        Phase(**{name: row._mapping[label] for name, label in phase_columns}, attempts=[])
        for row in rows
        if row._mapping[f"{statements.PHASE_PREFIX}pk"] is not None
    ]
    url = first[statements.ACQUIRED_REPO_URL]
    return run, url, phases


def renew(session: Session, lease: Lease, ttl_s: float) -> bool:
    """Extend the lease; returns whether cancellation was requested. LeaseLost if it was taken."""
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == lease.run_id, Run.lease_token == lease.token)
        .values(lease_expires_at=now + timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"lease on run {lease.run_id} (token {lease.token}) was taken over")
    return bool(session.scalar(select(Run.cancel_requested).where(Run.id == lease.run_id)))


def fence(session: Session, lease: Lease, *, base: str | None = None) -> bool:
    """Lock the run row if our token still holds it, so the writes that follow are fenced.

    The no-op UPDATE takes the row lock (PostgreSQL) or the write lock (SQLite) until commit,
    so a takeover cannot interleave with this transaction. Returns whether cancellation was
    requested (read in the same statement). A base commit given is written with it.
    """
    cancel_requested = statements.fence(
        session.connection(), lease.run_id, lease.token, utcnow(), base
    )
    if cancel_requested is None:
        raise lease_lost(lease)
    return cancel_requested


def lease_lost(lease: Lease) -> LeaseLost:
    """The error a fenced write raises when the token no longer holds the run."""
    return LeaseLost(f"lease on run {lease.run_id} (token {lease.token}) was taken over")
