"""The run executor: lease, worktree, phases with retries, checkpoints, result. Used by workers and `autopack run`."""

from __future__ import annotations

import functools
import logging
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import dialect_of, single_statement, transaction
from shared.dispatch import Dispatcher
from shared.errors import CancelRequested, LeaseLost, NotFound
from shared.intention import check_drift, describe_phase_change
from shared.logs import log_context
from shared.metrics import recording
from shared.models import Phase, Run, utcnow
from shared.plans import DEFAULT_MIN_CONFIDENCE, accept, normalize_plan
from shared.redaction import redact_file, secret_values
from shared.runs import concurrency, service
from shared.runs.concurrency import Admission
from shared.runs.states import AttemptStatus, PhaseStatus, RunStatus
from shared.scope import outside_scope
from shared.settings import Settings
from workers import leases
from workers.attempts import (
    AttemptStep,
    ExecutionObserver,
    NullObserver,
    safe_cwd,
    with_overrides,
)
from workers.changes import ChangedPath, changed_paths, tree_status
from workers.disk import DiskLimit, effective_limit_mb
from workers.doctor.doctor import Doctor
from workers.gitcmd import GitError
from workers.hardening.registry import PatternRegistry
from workers.heartbeat import Heartbeat
from workers.leases import Lease
from workers.ledger import AttemptOutcome, Ledger, begin_in, snapshot_in
from workers.phases import AttemptContext, PhaseRunner, build_env, runner_for
from workers.process import kill_group
from workers.recovery import Decision, PhaseRecovery, Recovery
from workers.toolchain import detect as detect_toolchains
from workers.workspace import Workspaces

logger = logging.getLogger(__name__)

COUNTED_FAILURES = (AttemptStatus.FAILED, AttemptStatus.TIMED_OUT)
MAX_PHASES = 100


@dataclass(frozen=True)
class Claim:
    """What a delivery's set-up transaction found; run, phases etc. only when it took the lease."""

    admission: Admission
    lease: Lease | None = None
    lost: list[tuple[str | None, int | None]] = field(default_factory=list)  # (host, pgid)
    run: Run | None = None
    phases: list[Phase] = field(default_factory=list)
    # The repository's registered origin, or why it has none now.
    source: str | NotFound | None = None


@dataclass
class RunExecutor:
    """Executes runs on this host; safe to call for any delivery of `runs.execute`."""

    settings: Settings
    sessions: sessionmaker[Session]
    owner: str
    observer: ExecutionObserver = NullObserver()  # noqa: RUF009 - stateless default
    # Sends runs waiting for a concurrency key once a slot frees (workers); None in embedded mode.
    dispatcher: Dispatcher | None = None
    # Embedded mode: a run waiting for its concurrency key waits in execute() instead of returning.
    wait_for_admission: bool = False
    # Workers: after each run, check out a spare worktree of its repository for the next one.
    keep_spare: bool = False

    def __post_init__(self) -> None:
        # A delivery's claim is one statement on PostgreSQL (_claim_plain_pg).
        self._postgresql = dialect_of(self.sessions) == "postgresql"
        self.workspaces = Workspaces(self.settings)
        self.registry = PatternRegistry.default()
        self.doctor = Doctor(self.settings)

    def execute(self, run_id: str) -> str | None:
        """Run it to the end if this call wins the lease; None when the delivery is a no-op."""
        claim = self._claim(run_id)
        if claim.lease is None:
            self._not_started(run_id, claim.admission)
            return None
        try:
            return self._run_leased(claim)
        finally:
            self._kick(claim.admission.key)  # a slot of its concurrency key may have freed

    def _claim(self, run_id: str) -> Claim:
        """A delivery's set-up in one transaction: end the run if it waited too long in the queue,
        admit it under its concurrency key, take its lease, record its start, read it.

        Embedded mode (wait_for_admission) has no broker to send a waiting run again, so it waits here.
        """
        while True:
            if self._postgresql:
                claimed = self._claim_plain_pg(run_id)
                if claimed is not None:
                    return claimed
            with transaction(self.sessions) as session:
                # Most runs have no key and no passed deadline: one statement takes and reads them.
                taken = (
                    None  # _claim_plain_pg just found it is not such a run
                    if self._postgresql
                    else leases.acquire_plain(
                        session, run_id, self.owner, self.settings.lease_ttl_s
                    )
                )
                plain, registered = taken if taken is not None else (None, None)
                if plain is not None:
                    admission = Admission(key=None, admitted=True)
                    lease: Lease | None = Lease(run_id, self.owner, plain.lease_token)
                else:
                    service.expire_queue_waits(session, run_id)
                    admission = concurrency.admit(session, run_id)
                    lease = (
                        leases.acquire(session, run_id, self.owner, self.settings.lease_ttl_s)
                        if admission.admitted
                        else None
                    )
                if lease is not None:
                    lost = begin_in(session, lease)
                    run, phases = snapshot_in(
                        session, run_id, first_lease=lease.token == 1, run=plain
                    )
                    try:
                        source: str | NotFound = (
                            repos.source_of(self.settings, run.repo, registered)
                            if plain is not None  # its URL came with it
                            else repos.resolve(session, self.settings, run.repo)
                        )
                    except NotFound as error:  # unregistered since: the run fails, below
                        source = error
            if admission.superseded:
                logger.info(
                    "run %s supersedes %s on concurrency key %r (on_conflict: cancel_running)",
                    run_id,
                    ", ".join(admission.superseded),
                    admission.key,
                )
            if lease is not None:
                return Claim(admission, lease, lost, run, phases, source)
            if not (admission.waiting and self.wait_for_admission):
                return Claim(admission)
            logger.info("run %s is %s", run_id, admission.reason)
            time.sleep(min(2.0, max(0.1, self.settings.heartbeat_interval_s)))

    def _claim_plain_pg(self, run_id: str) -> Claim | None:
        """The claim of a run with no concurrency key and no passed queue deadline, on PostgreSQL:
        one statement takes its lease and reads it with its phases (leases.claim_plain_pg), its
        own transaction. None when it is not such a run, or is held or ended: the caller then
        takes the general way.

        A takeover (a token above 1) then ends the earlier holder's attempts and reads the phases
        with their attempts, in a fenced transaction (begin_in); taken over again meanwhile, the
        delivery is ignored.
        """
        with single_statement(self.sessions) as session:
            taken = leases.claim_plain_pg(
                session.connection(), run_id, self.owner, self.settings.lease_ttl_s
            )
        if taken is None:
            return None
        run, registered, phases = taken
        admission = Admission(key=None, admitted=True)
        lease = Lease(run_id, self.owner, run.lease_token)
        lost: list[tuple[str | None, int | None]] = []
        if lease.token > 1:
            try:
                with transaction(self.sessions) as session:
                    leases.fence(session, lease)
                    lost = begin_in(session, lease)
                    run, phases = snapshot_in(session, run_id)
            except LeaseLost:
                return Claim(admission)
        try:
            source: str | NotFound = repos.source_of(self.settings, run.repo, registered)
        except NotFound as error:  # unregistered since: the run fails, in _execute_recorded
            source = error
        return Claim(admission, lease, lost, run, phases, source)

    def _not_started(self, run_id: str, admission: Admission) -> None:
        """Log why a delivery did not start its run and send the runs its key has room for."""
        if admission.waiting:
            logger.info(
                "run %s is %s; it is sent again when a slot frees", run_id, admission.reason
            )
        elif admission.cancelled:
            logger.info("run %s cancelled: %s", run_id, admission.reason)
        else:
            logger.info("run %s is finished or held by a live worker; delivery ignored", run_id)
        self._kick(admission.key)

    def _kick(self, key: str | None) -> None:
        """Send the runs waiting for key that could start now (never fails the delivery)."""
        if key is None or self.dispatcher is None:
            return
        try:
            concurrency.kick(self.sessions, self.dispatcher, key)
        except Exception:
            logger.warning(
                "could not send the runs waiting for concurrency key %r; the sweeper will",
                key,
                exc_info=True,
            )

    def _run_leased(self, claim: Claim) -> str | None:
        """Execute the run under its lease and heartbeat; None when it was abandoned or taken over."""
        lease = claim.lease
        assert lease is not None
        with log_context(run_id=lease.run_id, lease_token=lease.token):
            logger.info("lease acquired")
            heartbeat = Heartbeat(
                self.sessions, lease, self.settings.lease_ttl_s, self.settings.heartbeat_interval_s
            )
            with heartbeat:
                try:
                    return self._execute_leased(claim, lease, heartbeat)
                except LeaseLost:
                    logger.warning("lease was taken over; this worker stops without writing")
                    return None
                except (OperationalError, InterfaceError):
                    # The record is unreachable: leave the run to be resumed after the lease expires,
                    # rather than fail it for an outage.
                    logger.warning(
                        "database unavailable; abandoning the run for resumption", exc_info=True
                    )
                    return None
                except Exception as error:
                    # A bug must end the run, not leave it running to be retried forever.
                    logger.exception("internal error while executing the run")
                    return self._fail_internal(lease, error)

    def _execute_leased(self, claim: Claim, lease: Lease, heartbeat: Heartbeat) -> str:
        ledger = Ledger(self.sessions, lease, self.settings.effective_db_retry_s)
        try:
            return self._execute_recorded(claim, ledger, heartbeat)
        finally:
            ledger.settle(quiet=True)  # a write still in flight when the run ended abnormally

    def _execute_recorded(self, claim: Claim, ledger: Ledger, heartbeat: Heartbeat) -> str:
        for host, pgid in claim.lost:
            if host == socket.gethostname() and pgid and kill_group(pgid):
                logger.info("killed process group %s left by a dead worker", pgid)
        assert claim.run is not None and claim.source is not None
        run, phases = claim.run, claim.phases
        ledger.cancel_requested = bool(run.cancel_requested)  # read by the claim just now
        try:
            if isinstance(claim.source, NotFound):
                raise claim.source
            worktree, base = self._prepare_worktree(ledger, run, claim.source)
        except Exception as error:
            logger.exception("workspace preparation failed")
            ledger.finish_run(RunStatus.FAILED, reason=f"workspace: {error}")
            return RunStatus.FAILED
        if not phases and run.spec.get("plan"):
            plan_reason = self._normalize_plan(ledger, run, worktree)
            if plan_reason is not None:
                ledger.finish_run(
                    RunStatus.FAILED, reason=plan_reason, result_commit=base, diffstat=""
                )
                self.workspaces.remove(run.repo, run.id)
                return RunStatus.FAILED
            run, phases = ledger.load_run()
        status = RunStatus.SUCCEEDED
        reason: str | None = None
        # The last phase run left the files exactly at HEAD (its status said so): then the
        # worktree becomes the next run's spare without a checkout.
        pristine = False
        for phase in phases:
            if phase.status in (PhaseStatus.SUCCEEDED, PhaseStatus.SKIPPED):
                continue
            # The flag as of the last write (or the claim); start_attempt checks it again.
            if heartbeat.cancel_requested.is_set() or ledger.cancel_requested:
                status, reason = self._cancel_phase(ledger, phase)
                break
            deadline_reason = self._deadline_exceeded(run)
            if deadline_reason:
                ledger.phase_failed(phase.pk, deadline_reason)
                status, reason = RunStatus.TIMED_OUT, deadline_reason
                break
            try:
                phase_reason = self._run_phase(ledger, heartbeat, run, phase, worktree)
            except CancelRequested:  # seen when an attempt was about to start
                status, reason = self._cancel_phase(ledger, phase)
                break
            tree = tree_status(worktree) if phase_reason is None else None
            changes = tree.changes if tree is not None else []
            pristine = tree is not None and tree.pristine
            if phase_reason is None:
                phase_reason = self._check_drift(ledger, run, phase, worktree, changes)
            if phase_reason is None:
                checkpoint = self.workspaces.commit_checkpoint(
                    worktree,
                    f"autopack: phase {phase.phase_id} of run {run.id}",
                    changed=bool(changes),
                )
                # The last phase's success is written with the run's outcome, in one transaction.
                ledger.phase_succeeded(phase.pk, checkpoint, last=phase is phases[-1])
                if self.settings.checkpoint_push:
                    try:
                        self.workspaces.push_checkpoint(run.repo, run.id, checkpoint)
                    except Exception as error:  # the run goes on; only cross-host resume needs it
                        logger.warning("could not push checkpoint %s: %s", checkpoint[:12], error)
                self.observer.phase_finished(phase.phase_id, PhaseStatus.SUCCEEDED)
                continue
            if heartbeat.lost.is_set():
                raise LeaseLost("lease lost during the phase")
            if heartbeat.cancel_requested.is_set():
                status, reason = self._cancel_phase(ledger, phase)
                break
            ledger.phase_failed(phase.pk, phase_reason)
            self.observer.phase_finished(phase.phase_id, PhaseStatus.FAILED)
            status, reason = RunStatus.FAILED, f"phase {phase.phase_id}: {phase_reason}"
            deadline_reason = self._deadline_exceeded(run)
            if deadline_reason:
                status, reason = RunStatus.TIMED_OUT, f"phase {phase.phase_id}: {deadline_reason}"
            break
        head = self.workspaces.head(worktree)
        diffstat = "" if head == base else self.workspaces.diffstat(worktree, base, head)
        ledger.finish_run(status, reason=reason, result_commit=head, diffstat=diffstat)
        logger.info("run finished: %s", status)
        spare_kept = False
        if (
            status in (RunStatus.SUCCEEDED, RunStatus.CANCELLED)
            or not self.settings.keep_failed_worktrees
        ):
            if self.keep_spare:
                pristine_at = head if pristine and status == RunStatus.SUCCEEDED else None
                spare_kept = self._recycle(run, base, pristine_at)
            else:
                self.workspaces.remove(run.repo, run.id)
        if self.keep_spare and not spare_kept:
            self._prepare_spare(run, base)
        return status

    def _next_commit(self, run: Run, base: str) -> str:
        """The commit the repository's next run most likely starts from: the tip of the run's ref
        as last fetched, or the run's base."""
        try:
            return self.workspaces.resolve_ref(run.repo, run.ref)
        except GitError:
            return base

    def _recycle(self, run: Run, base: str, pristine_at: str | None = None) -> bool:
        """Keep the run's worktree as its repository's spare, or remove it (never fails the run);
        whether it became the spare. pristine_at: the commit whose files the worktree holds
        exactly, when a status after the last change said so."""
        try:
            return self.workspaces.recycle(
                run.repo, run.id, self._next_commit(run, base), pristine_at=pristine_at
            )
        except Exception as error:
            logger.warning("could not tidy up the worktree of run %s: %s", run.id, error)
            return False

    def _prepare_spare(self, run: Run, base: str) -> None:
        """Check out the repository's spare for its next run on this host (never fails the run)."""
        try:
            self.workspaces.prepare_spare(run.repo, self._next_commit(run, base))
        except Exception as error:
            logger.warning("could not prepare a spare worktree of %s: %s", run.repo, error)

    def _cancel_phase(self, ledger: Ledger, phase: Phase) -> tuple[RunStatus, str]:
        """Record the phase (and those after it) cancelled; the run's status and reason."""
        ledger.phase_cancelled(phase.pk)
        self.observer.phase_finished(phase.phase_id, PhaseStatus.CANCELLED)
        return RunStatus.CANCELLED, "cancelled by request"

    def _prepare_worktree(self, ledger: Ledger, run: Run, source: str) -> tuple[Path, str]:
        # A run resumed, or one naming a full commit id, needs no fetch when the mirror has it;
        # a fetch begun since the run started (by a run that arrived with it) serves it too.
        self.workspaces.sync_mirror(
            run.repo,
            source,
            want=run.base_commit or run.ref,
            since=run.started_at.timestamp() if run.started_at else None,
        )
        base = run.base_commit
        if base is None:
            base = self.workspaces.resolve_ref(run.repo, run.ref)
            ledger.set_base(base)
        start = run.checkpoint_commit or base
        if run.checkpoint_commit:
            logger.info("resuming from checkpoint %s", run.checkpoint_commit[:12])
            if not self.workspaces.has_commit(run.repo, run.checkpoint_commit):
                self.workspaces.fetch_checkpoint(run.repo, run.id)
            if not self.workspaces.has_commit(run.repo, run.checkpoint_commit):
                raise RuntimeError(
                    f"checkpoint {run.checkpoint_commit[:12]} is not reachable from this host; enable "
                    "AUTOPACK_CHECKPOINT_PUSH with an origin that accepts pushes, or share AUTOPACK_DATA_DIR between workers"
                )
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
        recovery = Recovery(
            self.settings, ledger, self.registry, self.doctor, heartbeat.stop_reason
        )
        state = PhaseRecovery()
        failures = sum(1 for a in phase.attempts if a.status in COUNTED_FAILURES)
        number = max((a.number for a in phase.attempts), default=0)
        reason: str | None = "no attempt was made"
        while failures < phase.max_attempts and not self._deadline_exceeded(run):
            number += 1
            spec = with_overrides(phase.spec, state.overrides)
            if state.overrides.delay_s:
                self._pause(state.overrides.delay_s, heartbeat)
                state.overrides = replace(state.overrides, delay_s=0.0)
            with log_context(phase=phase.phase_id, attempt=number):
                step = self._attempt(ledger, heartbeat, run, phase, worktree, runner, spec, number)
                if heartbeat.lost.is_set():
                    raise LeaseLost("lease lost during the attempt")
                succeeded = step.status == AttemptStatus.SUCCEEDED
                recovery.settle_previous(state, succeeded)
                decision = None
                if not succeeded and step.status != AttemptStatus.CANCELLED:
                    failed = step.failed(failures + 1 < phase.max_attempts)
                    decision = (
                        recovery.record_final(run, phase, failed)
                        if step.result.disk_exceeded
                        else recovery.after_failure(run, phase, failed, state)
                    )
                outcome = self._outcome(step, decision)
                ledger.finish_attempt(step.attempt_id, outcome)
                self.observer.attempt_finished(phase.phase_id, number, outcome.status)
                logger.info(
                    "attempt finished: %s%s",
                    outcome.status,
                    f" ({decision.mitigation})" if decision and decision.mitigation else "",
                )
                if succeeded:
                    return None
                reason = step.reason
                if step.status == AttemptStatus.CANCELLED or decision is None:
                    return reason
                if step.result.disk_exceeded:  # retrying would fill the worktree again
                    return reason
                if decision.give_up_reason:
                    return f"{reason}; {decision.give_up_reason}"
                if decision.counts:
                    failures += 1
        return reason

    def _attempt(
        self,
        ledger: Ledger,
        heartbeat: Heartbeat,
        run: Run,
        phase: Phase,
        worktree: Path,
        runner: PhaseRunner,
        spec: dict[str, Any],
        number: int,
    ) -> AttemptStep:
        """Run one attempt and check its changes against the phase scope."""
        commands = runner.commands(spec, worktree)
        attempt_id = ledger.start_attempt(phase.pk, number, commands, socket.gethostname())
        self.observer.attempt_started(phase.phase_id, number)
        log_path = self._log_path(run.id, phase.phase_id, number)
        timeout = float(phase.timeout_s)
        remaining = self._remaining_s(run)
        if remaining is not None:
            timeout = max(min(timeout, remaining), 1.0)
        env_extra = {
            "AUTOPACK_RUN_ID": run.id,
            "AUTOPACK_PHASE_ID": phase.phase_id,
            "AUTOPACK_ATTEMPT": str(number),
            "AUTOPACK_WORKTREE": str(worktree),
        }
        disk_limit_mb = effective_limit_mb(self.settings, run.spec.get("budgets"))
        # Each command's process group is recorded while the command runs, not before; the
        # ledger's next write joins that write.
        ctx = AttemptContext(
            settings=self.settings,
            worktree=worktree,
            log_path=log_path,
            timeout_s=timeout,
            should_stop=heartbeat.stop_reason,
            env=env_extra,
            on_spawn=functools.partial(ledger.record_process_soon, attempt_id),
            disk_limit=DiskLimit(worktree, disk_limit_mb) if disk_limit_mb else None,
        )
        started = time.monotonic()
        try:
            result = runner.run(spec, ctx)
        except BaseException:
            ledger.settle(quiet=True)
            raise
        # Mask secrets before anything reads the log (recovery, the Doctor, storage).
        redact_file(log_path, secret_values(self.settings, spec.get("secret_env") or []))
        scope = list(phase.spec.get("scope") or [])
        violations = (
            outside_scope((c.path for c in changed_paths(worktree)), scope) if scope else []
        )
        reason = result.reason
        if violations and reason is None:
            reason = f"changed files outside the phase scope: {', '.join(violations[:20])}"
        return AttemptStep(
            attempt_id=attempt_id,
            number=number,
            result=result.result,
            reason=reason,
            log_path=log_path,
            worktree=worktree,
            cwd=safe_cwd(worktree, spec.get("cwd")),
            commands=commands,
            env=build_env(self.settings, spec.get("env") or {}, env_extra),
            outside_scope=violations,
            duration_s=time.monotonic() - started,
            secret_names=list(spec.get("secret_env") or []),
        )

    def _fail_internal(self, lease: Lease, error: Exception) -> str | None:
        """Record an unexpected error as the run's failure (best effort) and clean up."""
        reason = f"internal error: {type(error).__name__}: {str(error)[:300]}"
        try:
            Ledger(self.sessions, lease, self.settings.effective_db_retry_s).finish_run(
                RunStatus.FAILED, reason=reason
            )
        except Exception:
            logger.exception("could not record the internal error; the lease will expire")
            return None
        with self.sessions() as session:
            repo = session.scalar(select(Run.repo).where(Run.id == lease.run_id))
        if repo and not self.settings.keep_failed_worktrees:
            self.workspaces.remove(repo, lease.run_id)
        return RunStatus.FAILED

    def _normalize_plan(self, ledger: Ledger, run: Run, worktree: Path) -> str | None:
        """Turn the run's plan into phases, in the worktree so toolchain detection helps; the reason when refused."""
        plan = normalize_plan(str(run.spec["plan"]), worktree=worktree, detect=detect_toolchains)
        for decision in plan.decisions:
            logger.info("plan: %s", decision)
        refusal = accept(plan, DEFAULT_MIN_CONFIDENCE, force=run.spec.get("plan_policy") == "force")
        if refusal is None and len(plan.phases) > MAX_PHASES:
            refusal = f"the plan normalizes to {len(plan.phases)} phases; a run may have at most {MAX_PHASES}"
        try:
            with ledger.fenced() as session:
                recording.record_phase6(
                    session,
                    run_id=run.id,
                    phase_id="_plan",
                    plan_normalization_used=True,
                    plan_normalization_confidence=round(plan.confidence, 3),
                    plan_normalization_warnings=len(plan.warnings),
                    plan_deliverables_count=len(plan.deliverables),
                    plan_scope_size_bytes=plan.scope_size_bytes,
                    phase_outcome="refused" if refusal else "normalized",
                )
        except LeaseLost:
            raise
        except Exception:  # telemetry never fails a run
            logger.warning("could not record the plan's metrics; the run goes on", exc_info=True)
        if refusal is not None:
            return f"plan refused (confidence {plan.confidence:.2f}): {refusal}"
        ledger.create_phases(plan.phases)
        return None

    def _check_drift(
        self, ledger: Ledger, run: Run, phase: Phase, worktree: Path, changes: list[ChangedPath]
    ) -> str | None:
        """Score what a succeeded phase changed against the goal; blocking mode fails it below the threshold."""
        options = run.spec.get("drift") or {}
        mode = options.get("mode", "advisory")
        if mode == "off" or not changes:
            return None
        outcomes = list((run.spec.get("intention") or {}).get("outcomes") or [])
        change_text = describe_phase_change(
            description=phase.name or phase.phase_id,
            commands=list(phase.spec.get("run") or []),
            changed_paths=[c.path for c in changes],
            diff_summary=self.workspaces.diff_summary(worktree),
        )
        check = check_drift(
            run.goal,
            outcomes,
            change_text,
            threshold=float(options.get("threshold", 0.1)),
            mode=mode,
        )
        ledger.record_drift(phase.pk, check.score, check.drifted)
        if check.drifted:
            logger.warning(
                "goal drift: phase %s scored %.3f against the goal (threshold %.2f, %s)",
                phase.phase_id,
                check.score,
                check.threshold,
                mode,
            )
        if check.should_fail:
            return f"goal drift: what the phase changed scores {check.score:.3f} against the goal, below the threshold {check.threshold:.2f}"
        return None

    def _pause(self, seconds: float, heartbeat: Heartbeat) -> None:
        """Back off before a retry, waking early if the run must stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and heartbeat.stop_reason() is None:
            time.sleep(min(0.2, deadline - time.monotonic()))

    def _log_path(self, run_id: str, phase_id: str, number: int) -> Path:
        folder = self.settings.data_dir / "logs" / run_id / phase_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{number}.log"
        path.write_bytes(b"")
        return path

    def _outcome(self, step: AttemptStep, decision: Decision | None) -> AttemptOutcome:
        # Mitigation commands ran with the same environment: mask again before storing.
        redact_file(step.log_path, secret_values(self.settings, step.secret_names))
        data = step.log_path.read_bytes()
        tail = data[-self.settings.output_tail_bytes :].decode("utf-8", "replace")
        cap = self.settings.max_log_bytes
        truncated = len(data) > cap
        if truncated:
            half = cap // 2
            marker = f"\n[autopack] ... {len(data) - cap} bytes omitted ...\n".encode()
            data = data[:half] + marker + data[-half:]
        return AttemptOutcome(
            status=step.status,
            exit_code=step.result.exit_code,
            signal=step.result.signal,
            failure_class="disk_limit"
            if step.result.disk_exceeded
            else str(decision.failure.failure_class)
            if decision
            else ("timeout" if step.result.timed_out else None),
            failure_reason=step.reason,
            output_tail=tail,
            log_path=str(step.log_path),
            log_content=data.decode("utf-8", "replace"),
            log_truncated=truncated,
            log_size=step.log_path.stat().st_size,
            mitigation=decision.mitigation if decision else None,
        )
