"""What follows a failed attempt: classify it, try the hardening registry, else ask the Doctor.

Every failed attempt leaves an error_logs row and a phase6_metrics row; every Doctor call an
llm_usage_events row and a token_efficiency_metrics row. Metric writes are fenced like every other
write, and a metric that cannot be written is logged, never allowed to fail the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.errors import LeaseLost
from shared.failures import FailureInfo, classify_failure
from shared.metrics import recording
from shared.metrics.estimate import estimate_doctor_tokens_avoided
from shared.models import Phase, Run
from shared.settings import Settings
from workers.doctor.doctor import Consultation, Doctor, build_context
from workers.doctor.providers import cost_usd
from workers.hardening.base import FailureContext, HardeningPolicy, RetryOverrides
from workers.hardening.registry import PatternRegistry
from workers.hardening.shell import AttemptShell
from workers.ledger import Ledger
from workers.patching import PatchRejected, apply_patch

logger = logging.getLogger(__name__)


@dataclass
class PhaseRecovery:
    """What recovery knows across the attempts of one phase."""

    applied_patterns: list[str] = field(default_factory=list)
    overrides: RetryOverrides = field(default_factory=RetryOverrides)
    pending_metric_id: int | None = None  # phase6 row waiting to learn whether its retry passed


@dataclass(frozen=True)
class FailedAttempt:
    """The facts of one failed attempt that recovery reasons about."""

    number: int
    worktree: Path
    cwd: Path
    commands: list[str]
    exit_code: int | None
    signal: int | None
    timed_out: bool
    output: str
    outside_scope: list[str]
    env: Mapping[str, str]
    log_path: Path
    duration_s: float
    attempts_left: bool  # would an ordinary retry be allowed after this failure?


@dataclass(frozen=True)
class Decision:
    """Whether to retry, how, and whether this failure counts against max_attempts."""

    failure: FailureInfo
    counts: bool
    give_up_reason: str | None = None
    overrides: RetryOverrides | None = None
    mitigation: str | None = None  # pattern id or doctor:<action>, recorded on the attempt


class Recovery:
    """Decides the next step after a failed attempt and records the metrics of that decision."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        registry: PatternRegistry,
        doctor: Doctor,
        should_stop: Callable[[], str | None],
    ) -> None:
        self.settings, self.ledger, self.registry, self.doctor, self.should_stop = (
            settings,
            ledger,
            registry,
            doctor,
            should_stop,
        )

    @contextmanager
    def _metrics(self, what: str) -> Iterator[Session]:
        """A fenced transaction for metrics whose failure is logged, not raised (LeaseLost still stops the run)."""
        try:
            with self.ledger.fenced() as session:
                yield session
        except LeaseLost:
            raise
        except Exception:
            logger.warning("could not record %s; the run goes on", what, exc_info=True)

    def settle_previous(self, state: PhaseRecovery, succeeded: bool) -> None:
        """Tell the phase6 row of the last mitigation whether the retry it enabled passed."""
        if state.pending_metric_id is None:
            return
        with self._metrics("mitigation outcome") as session:
            recording.mark_mitigation_outcome(session, state.pending_metric_id, succeeded)
        state.pending_metric_id = None

    def after_failure(
        self, run: Run, phase: Phase, attempt: FailedAttempt, state: PhaseRecovery
    ) -> Decision:
        """Classify, then mitigate or consult, then record; the caller retries according to the decision."""
        failure = classify_failure(
            exit_code=attempt.exit_code,
            timed_out=attempt.timed_out,
            signal=attempt.signal,
            output_tail=attempt.output,
            scope_violations=attempt.outside_scope,
        )
        hardening: dict[str, Any] = run.spec.get("hardening") or {}
        doctor_options: dict[str, Any] = run.spec.get("doctor") or {}
        base_metric = _base_metric(run, phase, attempt)
        decision: Decision | None = None
        if hardening.get("enabled", True):
            decision = self._harden(
                run, phase, attempt, state, failure, hardening, doctor_options, base_metric
            )
        if decision is None:
            decision = self._consult_or_retry(
                run, phase, attempt, state, failure, doctor_options, base_metric
            )
        with self._metrics("error log") as session:
            recording.record_error(
                session,
                run_id=run.id,
                phase_id=phase.phase_id,
                attempt=attempt.number,
                failure=failure,
                caught=decision.mitigation is not None
                and not decision.mitigation.startswith("doctor"),
                pattern_id=decision.mitigation
                if decision.mitigation and not decision.mitigation.startswith("doctor")
                else None,
            )
        return decision

    def record_final(self, run: Run, phase: Phase, attempt: FailedAttempt) -> Decision:
        """A failure that ends the phase whatever follows (the run's disk limit): record it only.

        No pattern, Doctor call or retry is tried: the same commands would fill the worktree again.
        """
        failure = classify_failure(
            exit_code=attempt.exit_code,
            timed_out=attempt.timed_out,
            signal=attempt.signal,
            output_tail=attempt.output,
            scope_violations=attempt.outside_scope,
        )
        with self._metrics("phase6 metrics") as session:
            recording.record_phase6(session, **_base_metric(run, phase, attempt))
        with self._metrics("error log") as session:
            recording.record_error(
                session,
                run_id=run.id,
                phase_id=phase.phase_id,
                attempt=attempt.number,
                failure=failure,
                caught=False,
                pattern_id=None,
            )
        return Decision(failure, counts=True)

    def _harden(
        self,
        run: Run,
        phase: Phase,
        attempt: FailedAttempt,
        state: PhaseRecovery,
        failure: FailureInfo,
        hardening: dict[str, Any],
        doctor_options: dict[str, Any],
        base_metric: dict[str, Any],
    ) -> Decision | None:
        ctx = FailureContext(
            run_id=run.id,
            phase_id=phase.phase_id,
            attempt=attempt.number,
            worktree=attempt.worktree,
            cwd=attempt.cwd,
            commands=tuple(attempt.commands),
            exit_code=attempt.exit_code,
            signal=attempt.signal,
            timed_out=attempt.timed_out,
            output=attempt.output,
            failure=failure,
            scope=tuple(phase.spec.get("scope") or ()),
            outside_scope=tuple(attempt.outside_scope),
            env=attempt.env,
            shell=AttemptShell(
                attempt.cwd,
                attempt.env,
                attempt.log_path,
                self.should_stop,
                self.settings.kill_grace_s,
            ),
            policy=HardeningPolicy(
                allow_undeclared_installs=bool(hardening.get("allow_undeclared_installs"))
                or self.settings.hardening_allow_undeclared_installs
            ),
            previous_patterns=tuple(state.applied_patterns),
        )
        disabled = [*self.settings.hardening_disabled_patterns, *(hardening.get("disable") or [])]
        applied, suggestions = self.registry.mitigate(ctx, disabled)
        if applied is None:
            if suggestions:
                _append_log(attempt.log_path, "hardening suggestions: " + "; ".join(suggestions))
            return None
        state.applied_patterns.append(applied.pattern_id)
        result = applied.result
        _append_log(
            attempt.log_path,
            f"pattern {applied.pattern_id}: "
            + ("; ".join(result.actions_taken) or "no action")
            + (f" (suggestions: {'; '.join(result.suggestions)})" if result.suggestions else ""),
        )
        skipped = result.give_up_reason is None and self._doctor_would_be_asked(
            run, phase, attempt, doctor_options
        )
        metric = {
            **base_metric,
            "failure_hardening_triggered": True,
            "failure_pattern_detected": applied.pattern_id,
            "failure_hardening_mitigated": result.changed or result.retry is not None,
            "mitigation_actions": result.actions_taken,
            "doctor_call_skipped": skipped,
        }
        with self._metrics("phase6 metrics") as session:
            if skipped:
                estimate = estimate_doctor_tokens_avoided(
                    session,
                    run.id,
                    self.doctor.tier_for(
                        recording.doctor_calls(session, run.id, phase.phase_id), doctor_options
                    ),
                )
                metric.update(
                    doctor_tokens_avoided_estimate=estimate.tokens,
                    estimate_coverage_n=estimate.coverage_n,
                    estimate_source=estimate.source,
                )
            row = recording.record_phase6(session, **metric)
            if result.give_up_reason is None:
                state.pending_metric_id = row.id
        if result.give_up_reason is not None:
            return Decision(
                failure,
                counts=True,
                give_up_reason=f"{applied.pattern_id}: {result.give_up_reason}",
                mitigation=applied.pattern_id,
            )
        if result.retry is not None:
            state.overrides = _merge(state.overrides, result.retry)
        # A retry enabled by a deterministic mitigation is not counted: each pattern acts a bounded
        # number of times per phase (max_applications), so this cannot loop.
        return Decision(
            failure, counts=False, overrides=result.retry, mitigation=applied.pattern_id
        )

    def _doctor_would_be_asked(
        self, run: Run, phase: Phase, attempt: FailedAttempt, options: dict[str, Any]
    ) -> bool:
        return self._doctor_refusal(run, phase, attempt, options) is None

    def _doctor_refusal(
        self, run: Run, phase: Phase, attempt: FailedAttempt, options: dict[str, Any]
    ) -> str | None:
        """Why the Doctor will not be asked about this failure (None: it will be)."""
        if not self.doctor.available:
            return "no LLM provider is configured"
        if not options.get("enabled", True):
            return "the run disabled the Doctor"
        if not attempt.attempts_left:
            return "no attempts left"
        per_phase = options.get("max_calls_per_phase")
        per_run = options.get("max_calls_per_run")
        per_phase = self.settings.doctor_max_calls_per_phase if per_phase is None else per_phase
        per_run = self.settings.doctor_max_calls_per_run if per_run is None else per_run
        token_cap = (run.spec.get("budgets") or {}).get("token_cap")
        with self.ledger.sessions() as session:
            if recording.doctor_calls(session, run.id, phase.phase_id) >= per_phase:
                return f"the phase used its {per_phase} Doctor call(s)"
            if recording.doctor_calls(session, run.id) >= per_run:
                return f"the run used its {per_run} Doctor call(s)"
            spent = recording.tokens_spent(session, run.id)
        if (
            token_cap is not None
            and spent + self.settings.doctor_context_tokens + self.settings.doctor_max_output_tokens
            > token_cap
        ):
            return f"the run's token_cap of {token_cap} would be exceeded ({spent} spent)"
        return None

    def _consult_or_retry(
        self,
        run: Run,
        phase: Phase,
        attempt: FailedAttempt,
        state: PhaseRecovery,
        failure: FailureInfo,
        options: dict[str, Any],
        base_metric: dict[str, Any],
    ) -> Decision:
        refusal = self._doctor_refusal(run, phase, attempt, options)
        if refusal is not None:
            if self.doctor.available and attempt.attempts_left:
                _append_log(attempt.log_path, f"Doctor not asked: {refusal}")
            with self._metrics("phase6 metrics") as session:
                recording.record_phase6(session, **base_metric)
            return Decision(failure, counts=True)
        context = build_context(
            goal=run.goal,
            intention=run.spec.get("intention"),
            phase_id=phase.phase_id,
            phase_name=phase.name,
            scope=list(phase.spec.get("scope") or []),
            commands=list(state.overrides.commands or attempt.commands),
            failure_class=str(failure.failure_class),
            failure_message=failure.message,
            output=attempt.output,
            budget_tokens=self.settings.doctor_context_tokens,
        )
        with self.ledger.sessions() as session:
            calls_on_phase = recording.doctor_calls(session, run.id, phase.phase_id)
        consultation = self.doctor.consult(context, calls_on_phase, options)
        self._record_consultation(run, phase, attempt, consultation, context, base_metric)
        action = consultation.action
        if action is None:
            _append_log(attempt.log_path, f"Doctor gave no usable answer: {consultation.error}")
            return Decision(failure, counts=True, mitigation="doctor:error")
        _append_log(
            attempt.log_path, f"Doctor ({consultation.model}): {action.action}: {action.reason}"
        )
        mitigation = f"doctor:{action.action}"
        if action.action == "give_up":
            return Decision(
                failure,
                counts=True,
                give_up_reason=f"the Doctor gave up: {action.reason}",
                mitigation=mitigation,
            )
        if action.action == "retry_with_command" and action.command:
            overrides = RetryOverrides(commands=(action.command,))
            state.overrides = _merge(state.overrides, overrides)
            return Decision(failure, counts=True, overrides=overrides, mitigation=mitigation)
        if action.action == "retry_with_patch" and action.patch:
            try:
                paths = apply_patch(
                    attempt.worktree, action.patch, list(phase.spec.get("scope") or [])
                )
                _append_log(attempt.log_path, f"Doctor's patch applied to {', '.join(paths)}")
            except PatchRejected as error:
                _append_log(attempt.log_path, f"Doctor's patch rejected: {error}")
        return Decision(failure, counts=True, mitigation=mitigation)

    def _record_consultation(
        self,
        run: Run,
        phase: Phase,
        attempt: FailedAttempt,
        consultation: Consultation,
        context: Any,
        base_metric: dict[str, Any],
    ) -> None:
        completion = consultation.completion
        with self._metrics("Doctor usage") as session:
            recording.record_llm_usage(
                session,
                run_id=run.id,
                phase_id=phase.phase_id,
                attempt=attempt.number,
                provider=consultation.provider,
                model=consultation.model,
                role="doctor",
                prompt_tokens=completion.prompt_tokens if completion else 0,
                completion_tokens=completion.completion_tokens if completion else 0,
                total_tokens=completion.total_tokens if completion else 0,
                is_doctor_call=True,
                doctor_model_tier=consultation.tier,
                action=consultation.action.action if consultation.action else None,
                cost_usd=cost_usd(
                    self.settings,
                    consultation.model,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                )
                if completion
                else None,
                latency_ms=completion.latency_ms if completion else None,
                error=consultation.error if completion is None else None,
            )
            recording.record_token_efficiency(
                session,
                run_id=run.id,
                phase_id=phase.phase_id,
                role="doctor",
                context_budget_tokens=context.budget_tokens,
                context_used_tokens=context.used_tokens,
                artifact_substitutions=context.substitutions,
                tokens_saved_artifacts=max(
                    context.output_tokens_full - context.output_tokens_kept, 0
                ),
            )
            recording.record_phase6(
                session,
                **base_metric,
                doctor_called=True,
                doctor_action=consultation.action.action if consultation.action else None,
                intention_context_injected=True,
                intention_context_chars=context.intention_chars,
                intention_context_source=context.intention_source,
            )


def _base_metric(run: Run, phase: Phase, attempt: FailedAttempt) -> dict[str, Any]:
    """The phase6 fields every failed attempt records."""
    return {
        "run_id": run.id,
        "phase_id": phase.phase_id,
        "attempt": attempt.number,
        "phase_outcome": "timed_out" if attempt.timed_out else "failed",
        "retry_count": attempt.number - 1,
        "duration_s": round(attempt.duration_s, 3),
    }


def _merge(current: RetryOverrides, new: RetryOverrides) -> RetryOverrides:
    """Later overrides win field by field; a delay applies once."""
    return RetryOverrides(
        cwd=new.cwd or current.cwd, commands=new.commands or current.commands, delay_s=new.delay_s
    )


def _append_log(path: Path, line: str) -> None:
    with path.open("ab") as log:
        log.write(f"[autopack] {line}\n".encode())
