"""The run executor: lease, worktree, phases with retries, checkpoints, result. Used by workers and `autopack run`."""

from __future__ import annotations

import functools
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.errors import LeaseLost
from shared.logs import log_context
from shared.models import Phase, Run, utcnow
from shared.runs.states import AttemptStatus, PhaseStatus, RunStatus
from shared.settings import Settings
from workers import leases
from workers.heartbeat import Heartbeat
from workers.leases import Lease
from workers.ledger import AttemptOutcome, Ledger
from workers.phases import AttemptContext, runner_for
from workers.process import CommandResult, kill_group
from workers.workspace import Workspaces

logger = logging.getLogger(__name__)

COUNTED_FAILURES = (AttemptStatus.FAILED, AttemptStatus.TIMED_OUT)


class ExecutionObserver(Protocol):
    """Receives progress as it happens (the CLI's live display)."""

    def attempt_started(self, phase_id: str, attempt: int) -> None:
        """An attempt of a phase began."""

    def attempt_finished(self, phase_id: str, attempt: int, status: str) -> None:
        """An attempt of a phase ended with status."""

    def phase_finished(self, phase_id: str, status: str) -> None:
        """A phase reached a final status."""


class NullObserver:
    """Ignores progress."""

    def attempt_started(self, phase_id: str, attempt: int) -> None:
        return None

    def attempt_finished(self, phase_id: str, attempt: int, status: str) -> None:
        return None

    def phase_finished(self, phase_id: str, status: str) -> None:
        return None


def worker_identity() -> str:
    """host:pid:nonce — unique per process incarnation."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class RunExecutor:
    """Executes runs on this host; safe to call for any delivery of `runs.execute`."""

    settings: Settings
    sessions: sessionmaker[Session]
    owner: str
    observer: ExecutionObserver = NullObserver()  # noqa: RUF009 - stateless default

    def __post_init__(self) -> None:
        self.workspaces = Workspaces(self.settings)

    def execute(self, run_id: str) -> str | None:
        """Run it to the end if this call wins the lease; None when the delivery is a no-op."""
        with transaction(self.sessions) as session:
            lease = leases.acquire(session, run_id, self.owner, self.settings.lease_ttl_s)
        if lease is None:
            logger.info("run %s is finished or held by a live worker; delivery ignored", run_id)
            return None
        with log_context(run_id=run_id, lease_token=lease.token):
            logger.info("lease acquired")
            heartbeat = Heartbeat(
                self.sessions, lease, self.settings.lease_ttl_s, self.settings.heartbeat_interval_s
            )
            with heartbeat:
                try:
                    return self._execute_leased(lease, heartbeat)
                except LeaseLost:
                    logger.warning("lease was taken over; this worker stops without writing")
                    return None

    def _execute_leased(self, lease: Lease, heartbeat: Heartbeat) -> str:
        ledger = Ledger(self.sessions, lease)
        for host, pgid in ledger.begin_run():
            if host == socket.gethostname() and pgid and kill_group(pgid):
                logger.info("killed process group %s left by a dead worker", pgid)
        run, phases = ledger.load_run()
        try:
            worktree, base = self._prepare_worktree(ledger, run)
        except Exception as error:
            logger.exception("workspace preparation failed")
            ledger.finish_run(RunStatus.FAILED, reason=f"workspace: {error}")
            return RunStatus.FAILED
        status = RunStatus.SUCCEEDED
        reason: str | None = None
        for phase in phases:
            if phase.status in (PhaseStatus.SUCCEEDED, PhaseStatus.SKIPPED):
                continue
            deadline_reason = self._deadline_exceeded(run)
            if deadline_reason:
                ledger.phase_failed(phase.pk, deadline_reason)
                status, reason = RunStatus.TIMED_OUT, deadline_reason
                break
            phase_reason = self._run_phase(ledger, heartbeat, run, phase, worktree)
            if phase_reason is None:
                checkpoint = self.workspaces.commit_checkpoint(
                    worktree, f"autopack: phase {phase.phase_id} of run {run.id}"
                )
                ledger.phase_succeeded(phase.pk, checkpoint)
                self.observer.phase_finished(phase.phase_id, PhaseStatus.SUCCEEDED)
                continue
            if heartbeat.lost.is_set():
                raise LeaseLost("lease lost during the phase")
            ledger.phase_failed(phase.pk, phase_reason)
            self.observer.phase_finished(phase.phase_id, PhaseStatus.FAILED)
            status, reason = RunStatus.FAILED, f"phase {phase.phase_id}: {phase_reason}"
            deadline_reason = self._deadline_exceeded(run)
            if deadline_reason:
                status, reason = RunStatus.TIMED_OUT, f"phase {phase.phase_id}: {deadline_reason}"
            break
        head = self.workspaces.head(worktree)
        diffstat = self.workspaces.diffstat(worktree, base, head)
        ledger.finish_run(status, reason=reason, result_commit=head, diffstat=diffstat)
        logger.info("run finished: %s", status)
        if status == RunStatus.SUCCEEDED or not self.settings.keep_failed_worktrees:
            self.workspaces.remove(run.repo, run.id)
        return status

    def _prepare_worktree(self, ledger: Ledger, run: Run) -> tuple[Path, str]:
        with self.sessions() as session:
            source = repos.resolve(session, self.settings, run.repo)
        self.workspaces.sync_mirror(run.repo, source)
        base = run.base_commit
        if base is None:
            base = self.workspaces.resolve_ref(run.repo, run.ref)
            ledger.set_base(base)
        start = run.checkpoint_commit or base
        if run.checkpoint_commit:
            logger.info("resuming from checkpoint %s", run.checkpoint_commit[:12])
        return self.workspaces.checkout(run.repo, run.id, start), base

    def _deadline_exceeded(self, run: Run) -> str | None:
        remaining = self._remaining_s(run)
        if remaining is not None and remaining <= 0:
            return f"run exceeded its max_duration_s of {run.spec['budgets']['max_duration_s']}s"
        return None

    def _remaining_s(self, run: Run) -> float | None:
        """Seconds left of the run's max_duration_s budget (None when it has none)."""
        limit = (run.spec.get("budgets") or {}).get("max_duration_s")
        if not limit or run.started_at is None:
            return None
        return float(limit) - (utcnow() - run.started_at).total_seconds()

    def _run_phase(
        self, ledger: Ledger, heartbeat: Heartbeat, run: Run, phase: Phase, worktree: Path
    ) -> str | None:
        """Attempt a phase until it succeeds or its attempts are spent; returns the failure reason."""
        runner = runner_for(phase.kind)
        failures = sum(1 for a in phase.attempts if a.status in COUNTED_FAILURES)
        number = max((a.number for a in phase.attempts), default=0)
        reason: str | None = "no attempt was made"
        while failures < phase.max_attempts and not self._deadline_exceeded(run):
            number += 1
            with log_context(phase=phase.phase_id, attempt=number):
                commands = runner.commands(phase.spec)
                attempt_id = ledger.start_attempt(phase.pk, number, commands, socket.gethostname())
                self.observer.attempt_started(phase.phase_id, number)
                log_path = self._log_path(run.id, phase.phase_id, number)
                timeout = float(phase.timeout_s)
                remaining = self._remaining_s(run)
                if remaining is not None:
                    timeout = max(min(timeout, remaining), 1.0)
                ctx = AttemptContext(
                    settings=self.settings,
                    worktree=worktree,
                    log_path=log_path,
                    timeout_s=timeout,
                    should_stop=heartbeat.stop_reason,
                    on_spawn=functools.partial(ledger.record_process, attempt_id),
                    env={
                        "AUTOPACK_RUN_ID": run.id,
                        "AUTOPACK_PHASE_ID": phase.phase_id,
                        "AUTOPACK_ATTEMPT": str(number),
                        "AUTOPACK_WORKTREE": str(worktree),
                    },
                )
                result = runner.run(phase.spec, ctx)
                if heartbeat.lost.is_set():
                    raise LeaseLost("lease lost during the attempt")
                outcome = self._outcome(result.result, result.reason, log_path)
                ledger.finish_attempt(attempt_id, outcome)
                self.observer.attempt_finished(phase.phase_id, number, outcome.status)
                logger.info("attempt finished: %s", outcome.status)
                if outcome.status == AttemptStatus.SUCCEEDED:
                    return None
                reason = result.reason
                failures += 1
        return reason

    def _log_path(self, run_id: str, phase_id: str, number: int) -> Path:
        folder = self.settings.data_dir / "logs" / run_id / phase_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{number}.log"
        path.write_bytes(b"")
        return path

    def _outcome(self, result: CommandResult, reason: str | None, log_path: Path) -> AttemptOutcome:
        data = log_path.read_bytes()
        tail = data[-self.settings.output_tail_bytes :].decode("utf-8", "replace")
        cap = self.settings.max_log_bytes
        truncated = len(data) > cap
        if truncated:
            half = cap // 2
            marker = f"\n[autopack] ... {len(data) - cap} bytes omitted ...\n".encode()
            data = data[:half] + marker + data[-half:]
        if result.ok and reason is None:
            status = AttemptStatus.SUCCEEDED
        elif result.timed_out:
            status = AttemptStatus.TIMED_OUT
        elif result.stopped == "cancel requested":
            status = AttemptStatus.CANCELLED
        else:
            status = AttemptStatus.FAILED
        failure_class = None
        if status == AttemptStatus.TIMED_OUT:
            failure_class = "timeout"
        elif status == AttemptStatus.FAILED:
            failure_class = "unknown"
        return AttemptOutcome(
            status=status,
            exit_code=result.exit_code,
            signal=result.signal,
            failure_class=failure_class,
            failure_reason=reason,
            output_tail=tail,
            log_path=str(log_path),
            log_content=data.decode("utf-8", "replace"),
            log_truncated=truncated,
            log_size=log_path.stat().st_size,
        )
