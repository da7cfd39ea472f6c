"""Fenced writes of a run's progress: attempts, phase outcomes, the run's end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.models import Attempt, AttemptLog, Phase, Run, utcnow
from shared.runs.spec import PhaseSpec
from shared.runs.states import AttemptStatus, PhaseStatus, RunStatus
from workers import leases
from workers.leases import Lease


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

    def __init__(self, sessions: sessionmaker[Session], lease: Lease) -> None:
        self.sessions = sessions
        self.lease = lease

    @contextmanager
    def fenced(self) -> Iterator[Session]:
        """A transaction that raises LeaseLost unless this worker still holds the lease."""
        with transaction(self.sessions) as session:
            leases.fence(session, self.lease)
            yield session

    def begin_run(self) -> list[tuple[str | None, int | None]]:
        """Record the start time and mark attempts of earlier lease holders as lost.

        Returns (host, pgid) of the lost attempts, so a worker on the same host can kill leftovers.
        """
        now = utcnow()
        with self.fenced() as session:
            lost = session.execute(
                select(Attempt.host, Attempt.pgid).where(
                    Attempt.run_id == self.lease.run_id,
                    Attempt.status == AttemptStatus.RUNNING,
                    Attempt.lease_token != self.lease.token,
                )
            ).all()
            session.execute(
                update(Run)
                .where(Run.id == self.lease.run_id, Run.started_at.is_(None))
                .values(started_at=now)
            )
            session.execute(
                update(Attempt)
                .where(
                    Attempt.run_id == self.lease.run_id,
                    Attempt.status == AttemptStatus.RUNNING,
                    Attempt.lease_token != self.lease.token,
                )
                .values(
                    status=AttemptStatus.LOST,
                    finished_at=now,
                    failure_reason="worker lost before the attempt finished; the run was resumed",
                )
            )
        return [(host, pgid) for host, pgid in lost]

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
        """Remember the commit the run started from."""
        with self.fenced() as session:
            session.execute(
                update(Run).where(Run.id == self.lease.run_id).values(base_commit=base_commit)
            )

    def record_process(self, attempt_id: int, pgid: int) -> None:
        """Remember the process group of the attempt's running command."""
        with self.fenced() as session:
            session.execute(update(Attempt).where(Attempt.id == attempt_id).values(pgid=pgid))

    def start_attempt(self, phase_pk: int, number: int, commands: list[str], host: str) -> int:
        """Insert a running attempt and mark its phase running; returns the attempt id."""
        now = utcnow()
        with self.fenced() as session:
            phase = session.get(Phase, phase_pk)
            assert phase is not None
            phase.status = PhaseStatus.RUNNING
            phase.started_at = phase.started_at or now
            phase.attempts_count = number
            attempt = Attempt(
                run_id=self.lease.run_id,
                phase_pk=phase_pk,
                number=number,
                worker=self.lease.owner,
                lease_token=self.lease.token,
                status=AttemptStatus.RUNNING,
                started_at=now,
                commands=commands,
                host=host,
            )
            session.add(attempt)
            session.flush()
            return attempt.id

    def finish_attempt(self, attempt_id: int, outcome: AttemptOutcome) -> None:
        """Store how an attempt ended and its full output."""
        with self.fenced() as session:
            attempt = session.get(Attempt, attempt_id)
            assert attempt is not None
            attempt.status = outcome.status
            attempt.finished_at = utcnow()
            attempt.exit_code = outcome.exit_code
            attempt.signal = outcome.signal
            attempt.failure_class = outcome.failure_class
            attempt.failure_reason = outcome.failure_reason
            attempt.output_tail = outcome.output_tail
            attempt.log_path = outcome.log_path
            attempt.mitigation = outcome.mitigation
            session.add(
                AttemptLog(
                    attempt_id=attempt_id,
                    content=outcome.log_content,
                    truncated=outcome.log_truncated,
                    size_bytes=outcome.log_size,
                )
            )

    def record_drift(self, phase_pk: int, score: float, flagged: bool) -> None:
        """Store a phase's goal-drift score."""
        with self.fenced() as session:
            session.execute(
                update(Phase)
                .where(Phase.pk == phase_pk)
                .values(drift_score=round(score, 4), drift_flagged=flagged)
            )

    def phase_succeeded(self, phase_pk: int, checkpoint: str) -> None:
        """Mark a phase done and move the run's checkpoint to its commit."""
        now = utcnow()
        with self.fenced() as session:
            session.execute(
                update(Phase)
                .where(Phase.pk == phase_pk)
                .values(status=PhaseStatus.SUCCEEDED, finished_at=now, checkpoint_commit=checkpoint)
            )
            session.execute(
                update(Run).where(Run.id == self.lease.run_id).values(checkpoint_commit=checkpoint)
            )

    def phase_cancelled(self, phase_pk: int) -> None:
        """Mark a phase and every phase after it cancelled."""
        now = utcnow()
        with self.fenced() as session:
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

    def phase_failed(self, phase_pk: int, reason: str) -> None:
        """Mark a phase failed and every phase still pending skipped."""
        now = utcnow()
        with self.fenced() as session:
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

    def finish_run(
        self,
        status: RunStatus,
        *,
        reason: str | None = None,
        result_commit: str | None = None,
        diffstat: str | None = None,
    ) -> None:
        """Write the run's final status and release the lease (the token stays, for fencing)."""
        now = utcnow()
        values = {
            "failure_reason": reason,
            "result_commit": result_commit,
            "result_diffstat": diffstat,
            "finished_at": now,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        with self.fenced() as session:
            written = session.execute(
                update(Run)
                .where(Run.id == self.lease.run_id, Run.status == RunStatus.RUNNING)
                .values(status=status, **values)
            ).rowcount  # type: ignore[attr-defined]
            if not written:
                # A cancel request arrived while the run was finishing: it ends cancelled, as asked.
                session.execute(
                    update(Run)
                    .where(Run.id == self.lease.run_id, Run.status == RunStatus.CANCELLING)
                    .values(
                        status=RunStatus.CANCELLED,
                        **{**values, "failure_reason": reason or "cancelled by request"},
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

    def load_run(self) -> tuple[Run, list[Phase]]:
        """A detached snapshot of the run and its phases, with attempts loaded."""
        with self.sessions() as session:
            run = session.get(Run, self.lease.run_id)
            assert run is not None
            phases = list(
                session.scalars(
                    select(Phase).where(Phase.run_id == run.id).order_by(Phase.position)
                )
            )
            for phase in phases:
                _ = phase.attempts
            session.expunge_all()
            return run, phases
