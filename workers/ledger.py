"""Fenced writes of a run's progress: attempts, phase outcomes, the run's end."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from shared.db import dialect_of, single_statement, transaction
from shared.errors import CancelRequested
from shared.logs import first_line
from shared.models import Attempt, Phase, Run, utcnow
from shared.runs.spec import PhaseSpec
from shared.runs.states import AttemptStatus, PhaseStatus, RunStatus
from workers import leases, statements
from workers.background import InBackground
from workers.leases import Lease

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# A lost connection, a refused connect, a server restarting: worth retrying the whole transaction.
RETRYABLE = (OperationalError, InterfaceError)
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0


def backoff_s(tries: int) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2**(tries-1))."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (tries - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _retried(
    what: str,
) -> Callable[[Callable[Concatenate[Ledger, P], T]], Callable[Concatenate[Ledger, P], T]]:
    """Retry a ledger write (one fenced transaction, written to be idempotent) through an outage."""

    def decorate(
        method: Callable[Concatenate[Ledger, P], T],
    ) -> Callable[Concatenate[Ledger, P], T]:
        @functools.wraps(method)
        def wrapper(self: Ledger, /, *args: P.args, **kwargs: P.kwargs) -> T:
            return self.retrying(what, lambda: method(self, *args, **kwargs))

        return wrapper

    return decorate


@dataclass(frozen=True)
class AttemptOutcome:
    """What an attempt's execution produced."""

    status: AttemptStatus
    exit_code: int | None
    signal: int | None
    failure_class: str | None
    failure_reason: str | None
    output_tail: str
    log_path: str
    log_content: str
    log_truncated: bool
    log_size: int
    mitigation: str | None = None


class Ledger:
    """Every write the executor makes, each in its own fenced transaction."""

    def __init__(self, sessions: sessionmaker[Session], lease: Lease, retry_s: float = 0.0) -> None:
        self.sessions = sessions
        self.lease = lease
        self.retry_s = retry_s  # how long a write is retried while the database is unreachable
        self._outage_since: float | None = None  # monotonic time the current outage was noticed
        # A succeeded attempt and when it ended, written with its phase's outcome.
        self._succeeded: tuple[int, AttemptOutcome, datetime] | None = None
        # The base commit, written with the next fenced write (set_base).
        self._base: str | None = None
        # The final phase's success (phase pk, checkpoint, when), written with finish_run.
        self._last_phase: tuple[int, str, datetime] | None = None
        # Whether cancellation was requested, as of the last fenced write.
        self.cancel_requested = False
        # Attempts this ledger started whose end is not committed yet. Attempts of earlier lease
        # holders were marked lost when this lease was taken (begin_in), so when this is empty
        # no attempt of the run is running.
        self._open_attempts: set[int] = set()
        # Process-group writes in flight (record_process_soon), joined before any other write.
        self._background = InBackground(f"autopack-ledger-{lease.run_id}")
        # Whether the transactions on a run's path can be single statements (statements.*_PG).
        self._postgresql = dialect_of(sessions) == "postgresql"

    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """call(), retried with backoff while the database is unreachable, for up to retry_s.

        Each call is a whole transaction, so a retry never sees half of an earlier try; a try whose
        commit landed but whose reply was lost is retried too, so every write is idempotent. One
        warning is logged per outage, not per try; LeaseLost and other errors are not retried.
        A write still in flight on the helper thread is joined first (raising its error), so the
        run's record is written in the order of the calls.
        """
        self.settle()
        return self._retry(what, call)

    def settle(self, *, quiet: bool = False) -> None:
        """Join the process-group write in flight, if any; raise its error unless quiet."""
        self._background.wait(quiet=quiet)

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_s
        tries = 0
        while True:
            try:
                result = call()
            except RETRYABLE as error:
                tries += 1
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                    logger.warning(
                        "database unreachable while %s; retrying with backoff for up to %.1fs: %s",
                        what,
                        self.retry_s,
                        first_line(error),
                    )
                if now >= deadline:
                    logger.warning(
                        "database still unreachable after %d tries over %.1fs; gave up %s",
                        tries,
                        now - self._outage_since,
                        what,
                    )
                    self._outage_since = None
                    raise
                time.sleep(min(backoff_s(tries), deadline - now))
                continue
            if self._outage_since is not None:
                logger.info(
                    "database reachable again after %.1fs (%s)",
                    time.monotonic() - self._outage_since,
                    what,
                )
                self._outage_since = None
            return result

    @contextmanager
    def fenced(self) -> Iterator[Session]:
        """A transaction that raises LeaseLost unless this worker still holds the lease.

        A base commit given to set_base since the last commit is written in it too.
        """
        base = self._base
        with transaction(self.sessions) as session:
            self.cancel_requested = leases.fence(session, self.lease, base=base)
            yield session
        if self._base == base:
            self._base = None

    @_retried("writing the run's start")
    def begin_run(self) -> list[tuple[str | None, int | None]]:
        """Mark attempts of earlier lease holders as lost (the start time is stamped by acquire).

        Returns (host, pgid) of the lost attempts, so a worker on the same host can kill leftovers.
        """
        with self.fenced() as session:
            return begin_in(session, self.lease)

    @_retried("writing the plan's phases")
    def create_phases(self, phases: list[dict[str, Any]]) -> None:
        """Insert the phases a normalized plan produced (only while the run has none)."""
        with self.fenced() as session:
            if (
                session.scalar(select(Phase.pk).where(Phase.run_id == self.lease.run_id).limit(1))
                is not None
            ):
                return
            for position, raw in enumerate(phases):
                spec = PhaseSpec.model_validate(raw).model_dump(mode="json")
                session.add(
                    Phase(
                        run_id=self.lease.run_id,
                        position=position,
                        phase_id=spec["id"],
                        name=spec.get("name"),
                        kind=spec["kind"],
                        spec=spec,
                        max_attempts=spec["max_attempts"],
                        timeout_s=spec["timeout_s"],
                        status=PhaseStatus.PENDING,
                        attempts_count=0,
                    )
                )

    def set_base(self, base_commit: str) -> None:
        """Remember the commit the run started from; written with the next fenced write.

        Nothing runs between resolving the base and the first attempt's start, which is such a
        write: a worker dying in between leaves no base, and the resumed run resolves it again.
        """
        self._base = base_commit

    def record_process_soon(self, attempt_id: int, pgid: int) -> None:
        """Remember the process group of the attempt's running command, on a helper thread.

        The write overlaps the command and what the executor does after it (reading the log, `git
        status`); the ledger's next write joins it first and raises its error (LeaseLost, an
        outage outlasting the retries), so nothing is written after it out of order.
        """
        self._background.submit(
            lambda: self._retry(
                "writing the attempt's process group", lambda: self._record_pgid(attempt_id, pgid)
            )
        )

    def _record_pgid(self, attempt_id: int, pgid: int) -> None:
        with self.fenced() as session:
            statements.record_pgid(session.connection(), attempt_id, pgid)

    @_retried("writing the attempt's start")
    def start_attempt(self, phase_pk: int, number: int, commands: list[str], host: str) -> int:
        """Insert a running attempt and mark its phase running; returns the attempt id.

        Raises CancelRequested, writing no attempt, when the run's cancellation was requested: the
        check and the start are one transaction, so no attempt starts after a cancel request.
        """
        now = utcnow()
        if self._postgresql:
            attempt_id = self._start_attempt_pg(phase_pk, number, commands, host, now)
            self._open_attempts.add(attempt_id)
            return attempt_id
        with self.fenced() as session:
            if self.cancel_requested:
                raise CancelRequested(f"run {self.lease.run_id}: cancellation requested")
            connection = session.connection()
            inserted = statements.start_attempt(
                connection,
                phase_pk,
                number,
                now,
                {
                    "run_id": self.lease.run_id,
                    "phase_pk": phase_pk,
                    "number": number,
                    "worker": self.lease.owner,
                    "lease_token": self.lease.token,
                    "status": AttemptStatus.RUNNING.value,
                    "started_at": now,
                    "commands": commands,
                    "host": host,
                },
            )
            if inserted is None:  # an earlier try committed, and only its reply was lost
                inserted = self._existing_attempt(session, phase_pk, number)
        self._open_attempts.add(inserted)
        return inserted

    def _start_attempt_pg(
        self, phase_pk: int, number: int, commands: list[str], host: str, now: datetime
    ) -> int:
        """start_attempt's transaction as one statement (statements.START_ATTEMPT_PG), its own
        transaction. When cancellation was requested it writes only the fence (and the base)."""
        base = self._base
        with single_statement(self.sessions) as session:
            started = statements.start_attempt_pg(
                session.connection(),
                self.lease.run_id,
                self.lease.token,
                now,
                base,
                phase_pk,
                number,
                self.lease.owner,
                commands,
                host,
            )
            if started is None:
                raise leases.lease_lost(self.lease)
            self.cancel_requested, inserted = started
        if self._base == base:
            self._base = None
        if self.cancel_requested:  # the phase and its attempt were not written
            raise CancelRequested(f"run {self.lease.run_id}: cancellation requested")
        if inserted is None:  # an earlier try committed, and only its reply was lost
            with single_statement(self.sessions) as session:
                inserted = self._existing_attempt(session, phase_pk, number)
        return inserted

    def _existing_attempt(self, session: Session, phase_pk: int, number: int) -> int:
        return session.execute(
            select(Attempt.id).where(
                Attempt.phase_pk == phase_pk,
                Attempt.number == number,
                Attempt.lease_token == self.lease.token,
            )
        ).scalar_one()

    def finish_attempt(self, attempt_id: int, outcome: AttemptOutcome) -> None:
        """Store how an attempt ended and its full output.

        A succeeded attempt is stored together with its phase's outcome (phase_succeeded, or
        phase_failed/phase_cancelled when drift blocks it), in the same transaction: a worker that
        dies in between leaves the attempt running, to be recorded lost when the run is resumed,
        and never a succeeded attempt on a phase that then runs again.
        """
        now = utcnow()
        if outcome.status == AttemptStatus.SUCCEEDED:
            self._succeeded = (attempt_id, outcome, now)
            return
        self._store_ended_attempt(attempt_id, outcome, now)

    @_retried("writing the attempt's outcome")
    def _store_ended_attempt(self, attempt_id: int, outcome: AttemptOutcome, now: datetime) -> None:
        with self.fenced() as session:
            _store_attempt(session, attempt_id, outcome, now)
        self._open_attempts.discard(attempt_id)

    def _succeeded_stored(self) -> None:
        """After a commit that wrote the succeeded attempt waiting for its phase (if any)."""
        if self._succeeded is not None:
            self._open_attempts.discard(self._succeeded[0])
            self._succeeded = None

    def _store_succeeded(self, session: Session) -> None:
        """Write the succeeded attempt waiting for its phase's outcome, if there is one."""
        if self._succeeded is not None:
            _store_attempt(session, *self._succeeded)

    @_retried("writing the phase's drift score")
    def record_drift(self, phase_pk: int, score: float, flagged: bool) -> None:
        """Store a phase's goal-drift score."""
        with self.fenced() as session:
            session.execute(
                update(Phase)
                .where(Phase.pk == phase_pk)
                .values(drift_score=round(score, 4), drift_flagged=flagged)
            )

    def phase_succeeded(self, phase_pk: int, checkpoint: str, *, last: bool = False) -> None:
        """Mark a phase done and move the run's checkpoint to its commit.

        last=True (the run's final phase): written with finish_run, which comes next anyway. Until
        then the phase is not succeeded on record, exactly as if the worker died before this call:
        a resumed run runs it again, it never counts as succeeded twice.
        """
        if last:
            self._last_phase = (phase_pk, checkpoint, utcnow())
            return
        self._write_phase_succeeded(phase_pk, checkpoint)

    @_retried("writing the phase's success")
    def _write_phase_succeeded(self, phase_pk: int, checkpoint: str) -> None:
        with self.fenced() as session:
            self._store_phase_succeeded(session, phase_pk, checkpoint, utcnow())
        self._succeeded_stored()

    def _store_phase_succeeded(
        self,
        session: Session,
        phase_pk: int,
        checkpoint: str,
        now: datetime,
        *,
        with_run: bool = True,
    ) -> None:
        self._store_succeeded(session)
        statements.phase_succeeded(
            session.connection(),
            phase_pk,
            checkpoint,
            now,
            self.lease.run_id if with_run else None,
        )

    @_retried("writing the phase's cancellation")
    def phase_cancelled(self, phase_pk: int) -> None:
        """Mark a phase and every phase after it cancelled."""
        now = utcnow()
        with self.fenced() as session:
            self._store_succeeded(session)
            session.execute(
                update(Phase)
                .where(Phase.pk == phase_pk)
                .values(
                    status=PhaseStatus.CANCELLED,
                    finished_at=now,
                    failure_reason="cancelled by request",
                )
            )
            session.execute(
                update(Phase)
                .where(
                    Phase.run_id == self.lease.run_id,
                    Phase.status.in_([PhaseStatus.PENDING, PhaseStatus.RUNNING]),
                )
                .values(status=PhaseStatus.CANCELLED, finished_at=now)
            )
        self._succeeded_stored()

    @_retried("writing the phase's failure")
    def phase_failed(self, phase_pk: int, reason: str) -> None:
        """Mark a phase failed and every phase still pending skipped."""
        now = utcnow()
        with self.fenced() as session:
            self._store_succeeded(session)
            session.execute(
                update(Phase)
                .where(Phase.pk == phase_pk)
                .values(status=PhaseStatus.FAILED, finished_at=now, failure_reason=reason)
            )
            session.execute(
                update(Phase)
                .where(
                    Phase.run_id == self.lease.run_id,
                    Phase.status.in_([PhaseStatus.PENDING, PhaseStatus.RUNNING]),
                )
                .values(status=PhaseStatus.SKIPPED, finished_at=now)
            )
        self._succeeded_stored()

    @_retried("writing the run's outcome")
    def finish_run(
        self,
        status: RunStatus,
        *,
        reason: str | None = None,
        result_commit: str | None = None,
        diffstat: str | None = None,
    ) -> None:
        """Write the run's final status and release the lease (the token stays, for fencing).

        The run's UPDATE comes first and is the transaction's fence. The writes that make sure
        nothing of the ended run stays running (attempts left running, phases left running or
        pending) are made unless the run succeeded under this lease with every attempt it
        started recorded, when there is nothing for them to find.
        """
        now = utcnow()
        base = self._base
        last = self._last_phase
        checkpoint = last[1] if last is not None else None
        ended = dict(reason=reason, result_commit=result_commit, diffstat=diffstat)
        succeeded = self._succeeded
        # On PostgreSQL the common end, the last phase's success with its attempt, is one statement.
        together = self._postgresql and last is not None and succeeded is not None
        run_end = statements.finish_params(
            self.lease.run_id,
            self.lease.token,
            str(status),
            now,
            checkpoint=checkpoint,
            base=base,
            **ended,
        )

        def finish_with_last_phase(connection: Connection) -> bool:
            assert last is not None and succeeded is not None
            return statements.finish_with_last_phase_pg(
                connection,
                run_end,
                succeeded[0],
                *_attempt_values(succeeded[1], succeeded[2]),
                phase_pk=last[0],
                checkpoint=last[1],
                phase_now=last[2],
            )

        if (
            together
            and status == RunStatus.SUCCEEDED
            and succeeded is not None
            and self._open_attempts <= {succeeded[0]}
        ):
            # Nothing is left to write once it lands: the statement is the whole transaction.
            with single_statement(self.sessions) as session:
                if finish_with_last_phase(session.connection()):
                    self._ended(base)
                    return
            together = False  # it wrote nothing: the general way writes what the end needs
        with transaction(self.sessions) as session:
            connection = session.connection()
            if together:
                finished = finish_with_last_phase(connection)
            else:
                finished = statements.finish_run(connection, run_end)
            if not finished:
                # Not running under our token: taken over (LeaseLost), or a cancel request arrived
                # while the run was finishing, and it ends cancelled, as asked.
                self.cancel_requested = leases.fence(session, self.lease, base=base)
                statements.finish_cancelling(
                    connection, self.lease.run_id, now, checkpoint=checkpoint, **ended
                )
            if last is not None and not (together and finished):
                self._store_phase_succeeded(session, *last, with_run=False)
            stored = {succeeded[0]} if last is not None and succeeded else set()
            if not (finished and status == RunStatus.SUCCEEDED and self._open_attempts <= stored):
                statements.end_open_work(
                    connection,
                    self.lease.run_id,
                    now,
                    attempt_reason=f"the run ended ({reason or status}) before this attempt was recorded",
                    left_status=str(
                        PhaseStatus.CANCELLED
                        if status == RunStatus.CANCELLED
                        else PhaseStatus.SKIPPED
                    ),
                )
        self._ended(base)

    def _ended(self, base: str | None) -> None:
        """After the run's end committed (base: the pending base it wrote, if any)."""
        if self._base == base:
            self._base = None
        self._last_phase = self._succeeded = None
        self._open_attempts.clear()

    @_retried("reading the run")
    def load_run(self) -> tuple[Run, list[Phase]]:
        """A detached snapshot of the run and its phases, with attempts loaded."""
        with self.sessions() as session:
            run, phases = snapshot_in(session, self.lease.run_id)
        self.cancel_requested = bool(run.cancel_requested)
        return run, phases


def begin_in(session: Session, lease: Lease) -> list[tuple[str | None, int | None]]:
    """begin_run's writes, in a transaction that holds the lease (fenced, or the one that took it).

    The first lease (token 1) has no earlier holder whose attempts could be left running.
    """
    if lease.token <= 1:
        return []
    now = utcnow()
    running_elsewhere = (
        Attempt.run_id == lease.run_id,
        Attempt.status == AttemptStatus.RUNNING,
        Attempt.lease_token != lease.token,
    )
    lost = session.execute(select(Attempt.host, Attempt.pgid).where(*running_elsewhere)).all()
    if lost:
        session.execute(
            update(Attempt)
            .where(*running_elsewhere)
            .values(
                status=AttemptStatus.LOST,
                finished_at=now,
                failure_reason="worker lost before the attempt finished; the run was resumed",
            )
            .execution_options(synchronize_session=False)
        )
    return [(host, pgid) for host, pgid in lost]


_PHASES = select(Phase).where(Phase.run_id == bindparam("p_run_id")).order_by(Phase.position)
_PHASES_WITH_ATTEMPTS = _PHASES.options(selectinload(Phase.attempts))
_PHASE_ROWS = (
    select(*cast(Table, Phase.__table__).c)
    .where(Phase.run_id == bindparam("p_run_id"))
    .order_by(Phase.position)
)


def snapshot_in(
    session: Session, run_id: str, *, first_lease: bool = False, run: Run | None = None
) -> tuple[Run, list[Phase]]:
    """A detached snapshot of the run and its phases with attempts loaded (expunges the session).

    first_lease: the run was never leased before, so it has no attempts to read; its phases are
    then built from plain rows, outside the session. run: the run as just read in this
    transaction (it is not read again).
    """
    if run is None:
        run = session.get(Run, run_id, populate_existing=True)
    assert run is not None
    if first_lease:
        rows = session.connection().execute(_PHASE_ROWS, {"p_run_id": run_id})
        phases = [Phase(**row._asdict(), attempts=[]) for row in rows]
    else:
        phases = list(session.scalars(_PHASES_WITH_ATTEMPTS, {"p_run_id": run_id}))
    session.expunge_all()
    return run, phases


def _store_attempt(
    session: Session, attempt_id: int, outcome: AttemptOutcome, finished_at: datetime
) -> None:
    """Write an attempt's end and its log (idempotent: a retry after a landed commit is a no-op)."""
    statements.store_attempt(
        session.connection(), attempt_id, *_attempt_values(outcome, finished_at)
    )


def _attempt_values(
    outcome: AttemptOutcome, finished_at: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An ended attempt's columns and its log's, as statements.store_attempt takes them."""
    ended = {
        "status": str(outcome.status),
        "finished_at": finished_at,
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "failure_class": outcome.failure_class,
        "failure_reason": outcome.failure_reason,
        "output_tail": outcome.output_tail,
        "log_path": outcome.log_path,
        "mitigation": outcome.mitigation,
    }
    log = {
        "content": outcome.log_content,
        "truncated": outcome.log_truncated,
        "size_bytes": outcome.log_size,
    }
    return ended, log
