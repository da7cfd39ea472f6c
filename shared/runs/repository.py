"""Queries over runs, phases and attempts: the only place that builds them."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.orm import Session, joinedload, selectinload

from shared.errors import InvalidInput, NotFound
from shared.models import Attempt, AttemptLog, Phase, Run
from shared.runs.spec import PHASE_ID_PATTERN, RUN_ID_PATTERN

_RUN_ID_RE = re.compile(RUN_ID_PATTERN)
_PHASE_ID_RE = re.compile(PHASE_ID_PATTERN)


def _checked_id(run_id: str) -> str:
    """An id no run can have (bad characters, too long) is simply not found."""
    if not _RUN_ID_RE.match(run_id):
        raise NotFound(f"run {run_id[:200]!r} not found")
    return run_id


def get_run(session: Session, run_id: str) -> Run:
    """The run, or NotFound."""
    run = session.get(Run, _checked_id(run_id))
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


def get_run_detail(session: Session, run_id: str) -> Run:
    """The run with phases and attempts loaded."""
    run = session.scalars(
        select(Run)
        .where(Run.id == _checked_id(run_id))
        .options(selectinload(Run.phases).selectinload(Phase.attempts))
    ).one_or_none()
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


def read_run_detail(session: Session, run_id: str) -> Run:
    """get_run_detail in one statement (the run joined to its phases and their attempts): one
    round trip where three were, for `GET /runs/{id}`; a run's phases and attempts are few."""
    run = (
        session.scalars(
            select(Run)
            .where(Run.id == _checked_id(run_id))
            .options(joinedload(Run.phases).joinedload(Phase.attempts))
        )
        .unique()
        .one_or_none()
    )
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


# The run's status columns and its phases' (id, status), in one round trip; a run without phases
# gives one row whose phase columns are NULL. Built once: polls run it many times a second.
_STATUS_ROWS = (
    select(
        Run.status,
        Run.failure_reason,
        Run.result_commit,
        Run.waiting_reason,
        Phase.phase_id,
        Phase.status.label("phase_status"),
    )
    .select_from(Run)
    .outerjoin(Phase, Phase.run_id == Run.id)
    .where(Run.id == bindparam("p_run_id"))
    .order_by(Phase.position)
)


def get_run_status_rows(
    session: Session, run_id: str
) -> tuple[tuple[str, str | None, str | None, str | None], list[tuple[str, str]]]:
    """(status, failure_reason, result_commit, waiting_reason) of the run and (phase_id, status) of
    its phases.

    One narrow query, no specs, attempts or logs: what status polls and long polls re-read.
    """
    rows = session.connection().execute(_STATUS_ROWS, {"p_run_id": _checked_id(run_id)}).all()
    if not rows:
        raise NotFound(f"run {run_id!r} not found")
    status, failure_reason, result_commit, waiting_reason = rows[0][:4]
    phases = [(row[4], row[5]) for row in rows if row[4] is not None]
    return (status, failure_reason, result_commit, waiting_reason), phases


def encode_cursor(run: Run) -> str:
    """An opaque cursor pointing after this run."""
    raw = json.dumps([run.created_at.isoformat(), run.id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Parse a cursor made by encode_cursor."""
    try:
        created, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
            raise ValueError("bad run id in cursor")
        return datetime.fromisoformat(created), run_id
    except (ValueError, TypeError) as error:
        raise InvalidInput("cursor is not valid", field="cursor") from error


def list_runs(
    session: Session,
    *,
    statuses: Sequence[str] = (),
    repo: str | None = None,
    labels: Mapping[str, str] | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Run], str | None]:
    """Runs newest first, filtered, one page at a time."""
    query = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
    if statuses:
        query = query.where(Run.status.in_(statuses))
    if repo:
        query = query.where(Run.repo == repo)
    for key, value in (labels or {}).items():
        query = query.where(Run.labels[key].as_string() == value)
    if cursor:
        created, run_id = decode_cursor(cursor)
        query = query.where(
            or_(Run.created_at < created, and_(Run.created_at == created, Run.id < run_id))
        )
    rows = list(session.scalars(query.limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def get_attempt(session: Session, run_id: str, phase_id: str, number: int) -> Attempt:
    """One attempt of one phase, or NotFound."""
    if not _RUN_ID_RE.match(run_id) or not _PHASE_ID_RE.match(phase_id):
        raise NotFound(
            f"attempt {number} of phase {phase_id[:100]!r} in run {run_id[:200]!r} not found"
        )
    attempt = session.scalars(
        select(Attempt)
        .join(Phase, Attempt.phase_pk == Phase.pk)
        .where(Phase.run_id == run_id, Phase.phase_id == phase_id, Attempt.number == number)
    ).one_or_none()
    if attempt is None:
        raise NotFound(f"attempt {number} of phase {phase_id!r} in run {run_id!r} not found")
    return attempt


def get_attempt_log(session: Session, attempt: Attempt) -> AttemptLog | None:
    """The stored full output of an attempt, if it finished."""
    return session.get(AttemptLog, attempt.id)
