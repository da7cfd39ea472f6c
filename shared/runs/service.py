"""Run use cases: submit, start, summarize. Services flush; the caller commits."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from sqlalchemy import JSON, Table, TextClause, bindparam, insert, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached, sessionmaker

from shared import repos
from shared.db import dialect_of, single_statement
from shared.errors import Conflict, InvalidInput, NotFound
from shared.intention import IntentionAnchor, render_intention_context
from shared.models import Phase, Run, utcnow
from shared.runs import repository
from shared.runs.schemas import RunRead, RunStatusRead
from shared.runs.spec import RunCreate
from shared.runs.states import RUN_TERMINAL, PhaseStatus, RunStatus
from shared.settings import Settings


@dataclass(frozen=True)
class Submitted:
    """The outcome of a submission: the run, and whether this call created it."""

    run: Run
    created: bool

    @property
    def needs_enqueue(self) -> bool:
        """Whether the caller must enqueue after committing."""
        return self.created and self.run.status == RunStatus.QUEUED


def new_run_id() -> str:
    """A server-chosen run id."""
    return f"run-{uuid.uuid4().hex[:16]}"


def submit(session: Session, settings: Settings, spec: RunCreate) -> Submitted:
    """Store a run and its phases; a known run_id with the same spec returns the existing run."""
    spec_hash = spec.spec_hash()
    if spec.run_id is not None:
        existing = session.get(Run, spec.run_id)
        if existing is not None:
            return _same_or_conflict(existing, spec_hash)
    try:
        repos.resolve(session, settings, spec.repo)
    except NotFound as error:
        raise InvalidInput(str(error), field="repo") from error
    run = _new_run(settings, spec, spec_hash)
    if spec.run_id is None:  # a fresh random id: nobody else can be inserting it
        _insert(session, run)
        return Submitted(run=run, created=True)
    nested = session.begin_nested()
    try:
        _insert(session, run)
    except IntegrityError:
        # Another client submitted the same run_id between our read and our insert.
        nested.rollback()
        existing = session.get(Run, run.id, populate_existing=True)
        if existing is None:
            raise
        return _same_or_conflict(existing, spec_hash)
    nested.commit()
    return Submitted(run=run, created=True)


def submit_in_one_statement(
    sessions: sessionmaker[Session], settings: Settings, spec: RunCreate
) -> Submitted | None:
    """submit() as one statement, its own transaction (SUBMIT_PG), for a run whose id the server
    chooses, on PostgreSQL; None (nothing done) otherwise: the caller then uses submit().

    The statement inserts the run and its phases only when the repository is registered (or
    configured in settings), so an unregistered one stores nothing and is a 422 on `repo`.
    """
    if spec.run_id is not None or dialect_of(sessions) != "postgresql":
        return None
    run = _new_run(settings, spec, spec.spec_hash())
    params = {f"r_{column.key}": getattr(run, column.key) for column in _RUNS.columns}
    params["p_check_repo"] = spec.repo not in settings.repos
    params["p_phases"] = [
        {name: getattr(phase, name) for name in _SUBMITTED_PHASE_COLUMNS} for phase in run.phases
    ]
    with single_statement(sessions) as session:
        rows = session.connection().execute(SUBMIT_PG, params).all()
    if not rows:
        raise InvalidInput(f"repository {spec.repo!r} is not registered", field="repo")
    pks = {position: pk for _run_id, pk, position in rows if pk is not None}
    for phase in run.phases:
        phase.pk, phase.run_id = pks[phase.position], run.id
    for instance in (run, *run.phases):
        make_transient_to_detached(instance)
    return Submitted(run=run, created=True)


def _new_run(settings: Settings, spec: RunCreate, spec_hash: str) -> Run:
    """The run a submission stores, with its phases, every column set (nothing left to load)."""
    now = utcnow()
    run = Run(
        **_UNSET_RUN_COLUMNS,
        id=spec.run_id or new_run_id(),
        repo=spec.repo,
        ref=spec.ref,
        goal=spec.goal,
        spec=spec.canonical(),
        spec_hash=spec_hash,
        labels=dict(spec.labels),
        concurrency_key=spec.concurrency.key if spec.concurrency else None,
        queue=settings.queue,
        queue_deadline_at=now + timedelta(seconds=spec.budgets.max_queue_wait_s)
        if spec.budgets.max_queue_wait_s
        else None,
        status=RunStatus.QUEUED if spec.start else RunStatus.CREATED,
        created_at=now,
        updated_at=now,
        enqueued_at=now if spec.start else None,
        lease_token=0,
        cancel_requested=False,
    )
    run.phases = [
        Phase(
            **_UNSET_PHASE_COLUMNS,
            position=position,
            phase_id=phase.id,
            name=phase.name,
            kind=phase.kind,
            spec=phase.model_dump(mode="json"),
            max_attempts=phase.max_attempts,
            timeout_s=phase.timeout_s,
            status=PhaseStatus.PENDING,
            attempts_count=0,
            attempts=[],  # known empty: the reply is built without loading them
        )
        for position, phase in enumerate(spec.phases)
    ]
    return run


_RUNS = cast(Table, Run.__table__)
_PHASES = cast(Table, Phase.__table__)
# Every column the submission does not set, set to NULL on the objects: they are stored as
# loaded (below), so no attribute is left to load later.
_UNSET_RUN_COLUMNS = dict.fromkeys(
    (
        "failure_reason",
        "started_at",
        "finished_at",
        "waiting_since",
        "waiting_reason",
        "lease_owner",
        "lease_expires_at",
        "base_commit",
        "checkpoint_commit",
        "result_commit",
        "result_diffstat",
    )
)
_UNSET_PHASE_COLUMNS = dict.fromkeys(
    (
        "started_at",
        "finished_at",
        "checkpoint_commit",
        "failure_reason",
        "drift_score",
        "drift_flagged",
    )
)
_INSERT_RUN = insert(_RUNS)
_INSERT_PHASES = insert(_PHASES).returning(_PHASES.c.pk, sort_by_parameter_order=True)

# PostgreSQL: a submission in one statement (submit_in_one_statement). The run is inserted only
# when its repository is registered (or p_check_repo is false: configured in settings), its phases
# from a JSON array of rows; a row per phase (run id, pk, position), one with a NULL pk for a run
# without phases, none when the repository is not registered. Column names come from the tables.
_SUBMITTED_PHASE_COLUMNS = {
    "position": "integer",
    "phase_id": "text",
    "name": "text",
    "kind": "text",
    "spec": "json",
    "max_attempts": "integer",
    "timeout_s": "integer",
    "status": "text",
    "attempts_count": "integer",
}
SUBMIT_PG: TextClause = text(
    f"""
    WITH run AS (
        INSERT INTO runs ({", ".join(c.name for c in _RUNS.columns)})
        SELECT {", ".join(f":r_{c.key}" for c in _RUNS.columns)}
        WHERE NOT :p_check_repo OR EXISTS (SELECT 1 FROM repositories WHERE name = :r_repo)
        RETURNING id
    ), phase AS (
        INSERT INTO phases (run_id, {", ".join(_SUBMITTED_PHASE_COLUMNS)})
        SELECT run.id, {", ".join(f"p.{name}" for name in _SUBMITTED_PHASE_COLUMNS)}
        FROM run, json_to_recordset(CAST(:p_phases AS json)) AS p(
            {", ".join(f"{name} {kind}" for name, kind in _SUBMITTED_PHASE_COLUMNS.items())}
        )
        RETURNING pk, position
    )
    SELECT run.id, phase.pk, phase.position FROM run LEFT JOIN phase ON true
    """  # noqa: S608 - names from the tables and the dict above, never input
).bindparams(
    *(bindparam(f"r_{column.key}", type_=column.type) for column in _RUNS.columns),
    bindparam("p_phases", type_=JSON),
)


def _insert(session: Session, run: Run) -> None:
    """INSERT the run and its phases as two Core statements, then add the objects to the
    session as if just loaded (make_transient_to_detached): the ORM's unit of work costs more
    than the statements themselves."""
    connection = session.connection()
    connection.execute(_INSERT_RUN, {c.key: getattr(run, c.key) for c in _RUNS.columns})
    if run.phases:
        rows = [
            {c.key: getattr(phase, c.key) for c in _PHASES.columns if c.key != "pk"}
            | {"run_id": run.id}
            for phase in run.phases
        ]
        keys = connection.execute(_INSERT_PHASES, rows).scalars().all()
        for phase, pk in zip(run.phases, keys, strict=True):
            phase.pk, phase.run_id = pk, run.id
    for instance in (run, *run.phases):
        make_transient_to_detached(instance)
    session.add(run)


def _same_or_conflict(existing: Run, spec_hash: str) -> Submitted:
    if existing.spec_hash != spec_hash:
        raise Conflict(f"run {existing.id!r} already exists with a different spec")
    return Submitted(run=existing, created=False)


def start(session: Session, run_id: str) -> Run:
    """Move a run created with start: false to queued; the caller enqueues after commit."""
    run = repository.get_run(session, run_id)
    now = utcnow()
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.CREATED)
        .values(status=RunStatus.QUEUED, enqueued_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"run {run_id!r} is {run.status}, only a created run can be started")
    session.refresh(run)
    return run


CANCEL_REASON = "cancelled by request"


def cancel(session: Session, run_id: str) -> Run:
    """Cancel a run: at once when it has not started, through its worker when it runs; 409 when it ended."""
    run = repository.get_run(session, run_id)
    now = utcnow()
    stopped = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_([RunStatus.CREATED, RunStatus.QUEUED]))
        .values(
            status=RunStatus.CANCELLED,
            cancel_requested=True,
            failure_reason=CANCEL_REASON,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if stopped:
        session.execute(
            update(Phase)
            .where(Phase.run_id == run_id, Phase.status == PhaseStatus.PENDING)
            .values(status=PhaseStatus.CANCELLED, finished_at=now)
            .execution_options(synchronize_session=False)
        )
    else:
        session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.RUNNING)
            .values(status=RunStatus.CANCELLING, cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    session.refresh(run)
    if not stopped and run.status != RunStatus.CANCELLING:
        raise Conflict(
            f"run {run_id!r} is {run.status}; only a created, queued or running run can be cancelled"
        )
    return run


def expire_queue_waits(session: Session, run_id: str | None = None) -> list[str]:
    """End runs that were not started before their queue deadline (budgets.max_queue_wait_s).

    With run_id, only that run (a worker checking the run it was handed); else every run (sweeper).
    """
    now = utcnow()
    only = (Run.id == run_id,) if run_id is not None else ()
    expired = list(
        session.scalars(
            update(Run)
            .where(
                *only,
                Run.status.in_([RunStatus.QUEUED, RunStatus.CREATED]),
                Run.queue_deadline_at < now,
            )
            .values(
                status=RunStatus.TIMED_OUT,
                finished_at=now,
                updated_at=now,
                failure_reason="not started within its max_queue_wait_s",
            )
            .returning(Run.id)
        )
    )
    if expired:
        session.execute(
            update(Phase)
            .where(Phase.run_id.in_(expired), Phase.status == PhaseStatus.PENDING)
            .values(status=PhaseStatus.SKIPPED, finished_at=now)
            .execution_options(synchronize_session=False)
        )
    return expired


def run_read(run: Run) -> RunRead:
    """The API view of a run (phases and attempts loaded), with the size of its intention context."""
    read = RunRead.model_validate(run)
    if run.status != RunStatus.QUEUED:
        read.waiting_reason = None  # kept on the row for the timeline, current only while queued
    anchor = IntentionAnchor.from_mapping(run.spec.get("intention"))
    read.intention_context_chars = render_intention_context(run.goal, anchor).chars
    return read


def status_of(run: Run) -> RunStatusRead:
    """The compact status of a run (phases must be loaded)."""
    return _compact_status(
        run.id,
        run.status,
        run.failure_reason,
        run.result_commit,
        [(phase.phase_id, phase.status) for phase in run.phases],
        run.waiting_reason,
    )


def read_status(session: Session, run_id: str) -> RunStatusRead:
    """The compact status of a run read with two narrow queries (status polls, long polls)."""
    (status, failure_reason, result_commit, waiting_reason), phases = (
        repository.get_run_status_rows(session, run_id)
    )
    return _compact_status(run_id, status, failure_reason, result_commit, phases, waiting_reason)


def _compact_status(
    run_id: str,
    status: str,
    failure_reason: str | None,
    result_commit: str | None,
    phases: Sequence[tuple[str, str]],
    waiting_reason: str | None = None,
) -> RunStatusRead:
    counts = Counter(phase_status for _, phase_status in phases)
    total = len(phases) or 1
    done = sum(counts[s] for s in (PhaseStatus.SUCCEEDED, PhaseStatus.SKIPPED))
    current = next((pid for pid, st in phases if st == PhaseStatus.RUNNING), None)
    if current is None and status == RunStatus.RUNNING:
        current = next((pid for pid, st in phases if st == PhaseStatus.PENDING), None)
    return RunStatusRead(
        id=run_id,
        status=status,
        terminal=RunStatus(status) in RUN_TERMINAL,
        phases={s.value: counts.get(s.value, 0) for s in PhaseStatus},
        percent_complete=round(100.0 * done / total, 1),
        current_phase=current,
        failure_reason=failure_reason,
        result_commit=result_commit,
        waiting_reason=waiting_reason if status == RunStatus.QUEUED else None,
    )
