"""Aggregate queries of the dashboard: one SQL aggregate per category, on indexed columns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from shared.metrics.schemas import (
    ArtifactTokensAvoided,
    CoverageBucket,
    DashboardSummary,
    DoctorTokensAvoided,
    PatternCount,
    Phase6Stats,
    TokenEfficiency,
    TokensSpent,
)
from shared.models import Attempt, LlmUsageEvent, Phase, Phase6Metric, Run, TokenEfficiencyMetric

_sum = func.coalesce


def _total(column: Any) -> Any:
    return _sum(func.sum(column), 0)


def tokens_spent(
    session: Session, *, run_id: str | None = None, since: datetime | None = None
) -> TokensSpent:
    """Category 1 for one run, or for every call since a time."""
    query: Select[Any] = select(
        _total(LlmUsageEvent.total_tokens),
        _total(LlmUsageEvent.prompt_tokens),
        _total(LlmUsageEvent.completion_tokens),
        _total(case((LlmUsageEvent.is_doctor_call.is_(True), LlmUsageEvent.total_tokens), else_=0)),
        func.count(),
        _total(case((LlmUsageEvent.is_doctor_call.is_(True), 1), else_=0)),
        func.sum(LlmUsageEvent.cost_usd),
    )
    query = _scope(query, LlmUsageEvent, run_id, since)
    total, prompt, completion, doctor, calls, doctor_calls, cost = session.execute(query).one()
    return TokensSpent(
        total_tokens=int(total),
        prompt_tokens=int(prompt),
        completion_tokens=int(completion),
        doctor_tokens=int(doctor),
        llm_calls=int(calls),
        doctor_calls=int(doctor_calls),
        cost_usd=round(float(cost), 6) if cost is not None else None,
    )


def artifact_tokens_avoided(
    session: Session, *, run_id: str | None = None, since: datetime | None = None
) -> ArtifactTokensAvoided:
    """Category 2."""
    query: Select[Any] = select(
        _total(TokenEfficiencyMetric.tokens_saved_artifacts),
        _total(TokenEfficiencyMetric.artifact_substitutions),
    )
    saved, substitutions = session.execute(
        _scope(query, TokenEfficiencyMetric, run_id, since)
    ).one()
    return ArtifactTokensAvoided(tokens_saved=int(saved), substitutions=int(substitutions))


def doctor_tokens_avoided(
    session: Session, *, run_id: str | None = None, since: datetime | None = None
) -> DoctorTokensAvoided:
    """Category 3, with how many estimates came from each source."""
    query: Select[Any] = (
        select(
            Phase6Metric.estimate_source,
            func.count(),
            _total(Phase6Metric.estimate_coverage_n),
            _total(Phase6Metric.doctor_tokens_avoided_estimate),
        )
        .where(Phase6Metric.doctor_call_skipped.is_(True))
        .group_by(Phase6Metric.estimate_source)
    )
    coverage: dict[str, CoverageBucket] = {}
    total = skipped = 0
    for source, count, total_n, tokens in session.execute(
        _scope(query, Phase6Metric, run_id, since)
    ):
        coverage[source or "unknown"] = CoverageBucket(count=int(count), total_n=int(total_n))
        total += int(tokens)
        skipped += int(count)
    return DoctorTokensAvoided(estimate_total=total, calls_skipped=skipped, coverage=coverage)


def _scope(
    query: Select[Any], model: Any, run_id: str | None, since: datetime | None
) -> Select[Any]:
    if run_id is not None:
        query = query.where(model.run_id == run_id)
    if since is not None:
        query = query.where(model.created_at >= since)
    return query


def phase6_stats(session: Session, run_id: str) -> Phase6Stats:
    """The Phase6 view of one run."""
    phases = int(
        session.scalar(select(func.count()).select_from(Phase).where(Phase.run_id == run_id)) or 0
    )
    row = session.execute(
        select(
            _total(case((Phase6Metric.failure_hardening_triggered.is_(True), 1), else_=0)),
            _total(case((Phase6Metric.mitigation_fixed.is_(True), 1), else_=0)),
            _total(case((Phase6Metric.doctor_called.is_(True), 1), else_=0)),
            _total(case((Phase6Metric.intention_context_injected.is_(True), 1), else_=0)),
            _total(Phase6Metric.intention_context_chars),
            func.max(case((Phase6Metric.plan_normalization_used.is_(True), 1), else_=0)),
        ).where(Phase6Metric.run_id == run_id)
    ).one()
    triggered, fixed, doctor_calls, injected, chars, plan_used = row
    pattern_rows = session.execute(
        select(Phase6Metric.failure_pattern_detected, func.count())
        .where(Phase6Metric.run_id == run_id, Phase6Metric.failure_pattern_detected.is_not(None))
        .group_by(Phase6Metric.failure_pattern_detected)
    ).all()
    patterns = {str(pattern): int(count) for pattern, count in pattern_rows}
    avoided = doctor_tokens_avoided(session, run_id=run_id)
    return Phase6Stats(
        run_id=run_id,
        total_phases=phases,
        failure_hardening_triggered_count=int(triggered),
        patterns_detected=patterns,
        mitigations_fixed=int(fixed),
        doctor_calls_made=int(doctor_calls),
        doctor_calls_skipped=avoided.calls_skipped,
        total_doctor_tokens_avoided_estimate=avoided.estimate_total,
        estimate_coverage_stats=avoided.coverage,
        intention_context_injected_count=int(injected),
        intention_context_total_chars=int(chars),
        intention_context_avg_chars=round(int(chars) / int(injected), 1) if injected else 0.0,
        plan_normalization_used=bool(plan_used),
    )


def token_efficiency(session: Session, run_id: str) -> TokenEfficiency:
    """The token-efficiency view of one run."""
    m = TokenEfficiencyMetric
    row = session.execute(
        select(
            func.count(),
            _total(m.context_budget_tokens),
            _total(m.context_used_tokens),
            _total(m.files_kept),
            _total(m.files_omitted),
            _total(m.artifact_substitutions),
            _total(m.tokens_saved_artifacts),
        ).where(m.run_id == run_id)
    ).one()
    contexts, budget, used, kept, omitted, substitutions, saved = (int(v) for v in row)
    return TokenEfficiency(
        run_id=run_id,
        contexts=contexts,
        context_budget_tokens=budget,
        context_used_tokens=used,
        files_kept=kept,
        files_omitted=omitted,
        artifact_substitutions=substitutions,
        tokens_saved_artifacts=saved,
    )


def summary(session: Session, since: datetime, top: int = 10) -> DashboardSummary:
    """Everything since a time: runs by status, phase and attempt counts, categories, patterns."""
    runs = {
        str(status): int(count)
        for status, count in session.execute(
            select(Run.status, func.count()).where(Run.created_at >= since).group_by(Run.status)
        )
    }
    phases = int(
        session.scalar(
            select(func.count())
            .select_from(Phase)
            .join(Run, Phase.run_id == Run.id)
            .where(Run.created_at >= since)
        )
        or 0
    )
    attempts = int(
        session.scalar(select(func.count()).select_from(Attempt).where(Attempt.started_at >= since))
        or 0
    )
    pattern_rows = session.execute(
        select(
            Phase6Metric.failure_pattern_detected,
            func.count(),
            _total(case((Phase6Metric.mitigation_fixed.is_(True), 1), else_=0)),
        )
        .where(Phase6Metric.created_at >= since, Phase6Metric.failure_pattern_detected.is_not(None))
        .group_by(Phase6Metric.failure_pattern_detected)
        .order_by(func.count().desc(), Phase6Metric.failure_pattern_detected)
        .limit(top)
    ).all()
    settled = session.execute(
        select(
            _total(case((Phase6Metric.mitigation_fixed.is_(True), 1), else_=0)),
            _total(case((Phase6Metric.mitigation_fixed.is_not(None), 1), else_=0)),
        ).where(Phase6Metric.created_at >= since)
    ).one()
    fixed, decided = int(settled[0]), int(settled[1])
    return DashboardSummary(
        since=since,
        runs=runs,
        phases=phases,
        attempts=attempts,
        tokens_spent=tokens_spent(session, since=since),
        artifact_tokens_avoided=artifact_tokens_avoided(session, since=since),
        doctor_tokens_avoided=doctor_tokens_avoided(session, since=since),
        top_failure_patterns=[
            PatternCount(pattern_id=str(p), triggered=int(c), fixed=int(f))
            for p, c, f in pattern_rows
        ],
        mitigation_success_rate=round(fixed / decided, 4) if decided else None,
    )
