"""Aggregate queries of the dashboard: one SQL aggregate per category, on indexed columns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from shared.metrics import rollups
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
    """The Phase6 view of one run: one scan of its phase6_metrics rows, grouped in SQL."""
    phases = int(
        session.scalar(select(func.count()).select_from(Phase).where(Phase.run_id == run_id)) or 0
    )
    m = Phase6Metric

    def count_if(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    rows = session.execute(
        select(
            m.failure_pattern_detected,
            m.estimate_source,
            m.doctor_call_skipped,
            func.count(),
            count_if(m.failure_hardening_triggered.is_(True)),
            count_if(m.mitigation_fixed.is_(True)),
            count_if(m.doctor_called.is_(True)),
            count_if(m.intention_context_injected.is_(True)),
            func.sum(m.intention_context_chars),
            func.max(case((m.plan_normalization_used.is_(True), 1), else_=0)),
            func.sum(m.estimate_coverage_n),
            func.sum(m.doctor_tokens_avoided_estimate),
        )
        .where(m.run_id == run_id)
        .group_by(m.failure_pattern_detected, m.estimate_source, m.doctor_call_skipped)
    ).all()
    triggered = fixed = doctor_calls = injected = chars = skipped = tokens = 0
    plan_used = False
    patterns: dict[str, int] = {}
    coverage: dict[str, CoverageBucket] = {}
    for pattern, source, was_skipped, n, trig, fix, called, inj, ch, plan, cov_n, tok in rows:
        n = int(n)
        triggered, fixed = triggered + int(trig or 0), fixed + int(fix or 0)
        doctor_calls, injected = doctor_calls + int(called or 0), injected + int(inj or 0)
        chars += int(ch or 0)
        plan_used = plan_used or bool(plan)
        if pattern is not None:
            patterns[str(pattern)] = patterns.get(str(pattern), 0) + n
        if was_skipped:
            bucket = coverage.setdefault(source or "unknown", CoverageBucket())
            bucket.count += n
            bucket.total_n += int(cov_n or 0)
            skipped += n
            tokens += int(tok or 0)
    return Phase6Stats(
        run_id=run_id,
        total_phases=phases,
        failure_hardening_triggered_count=triggered,
        patterns_detected=patterns,
        mitigations_fixed=fixed,
        doctor_calls_made=doctor_calls,
        doctor_calls_skipped=skipped,
        total_doctor_tokens_avoided_estimate=tokens,
        estimate_coverage_stats=coverage,
        intention_context_injected_count=injected,
        intention_context_total_chars=chars,
        intention_context_avg_chars=round(chars / injected, 1) if injected else 0.0,
        plan_normalization_used=plan_used,
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
    """Everything since a time: runs by status, phase and attempt counts, categories, patterns.

    The metric categories are read from the hourly rollups for every whole hour of the window and
    from the raw rows only for its partial first hour, so the cost does not grow with the window.
    """
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
    hour = rollups.first_whole_hour(since)
    llm = rollups.llm_totals_raw(session, since, hour) + rollups.llm_totals_rolled(session, hour)
    saved, substitutions = (
        a + b
        for a, b in zip(
            rollups.artifacts_raw(session, since, hour),
            rollups.artifacts_rolled(session, hour),
            strict=True,
        )
    )
    groups = rollups.merge_phase6(
        rollups.phase6_raw(session, since, hour), rollups.phase6_rolled(session, hour)
    )
    patterns, rate, avoided = _phase6_window(groups, top)
    return DashboardSummary(
        since=since,
        runs=runs,
        phases=phases,
        attempts=attempts,
        tokens_spent=TokensSpent(
            total_tokens=llm.total_tokens,
            prompt_tokens=llm.prompt_tokens,
            completion_tokens=llm.completion_tokens,
            doctor_tokens=llm.doctor_tokens,
            llm_calls=llm.calls,
            doctor_calls=llm.doctor_calls,
            cost_usd=round(llm.cost_usd, 6) if llm.cost_usd is not None else None,
        ),
        artifact_tokens_avoided=ArtifactTokensAvoided(
            tokens_saved=saved, substitutions=substitutions
        ),
        doctor_tokens_avoided=avoided,
        top_failure_patterns=patterns,
        mitigation_success_rate=rate,
    )


def _phase6_window(
    groups: list[rollups.Phase6Group], top: int
) -> tuple[list[PatternCount], float | None, DoctorTokensAvoided]:
    """Top patterns, mitigation success rate and category 3 from Phase6 groups."""
    per_pattern: dict[str, list[int]] = {}
    fixed = decided = skipped = tokens = 0
    coverage: dict[str, CoverageBucket] = {}
    for g in groups:
        fixed += g.fixed
        decided += g.decided
        if g.pattern:
            counts = per_pattern.setdefault(g.pattern, [0, 0])
            counts[0] += g.n
            counts[1] += g.fixed
        if g.skipped and g.n:
            bucket = coverage.setdefault(g.source or "unknown", CoverageBucket())
            bucket.count += g.n
            bucket.total_n += g.coverage_n
            skipped += g.n
            tokens += g.tokens
    ranked = sorted(per_pattern.items(), key=lambda item: (-item[1][0], item[0]))[:top]
    patterns = [PatternCount(pattern_id=p, triggered=c, fixed=f) for p, (c, f) in ranked if c]
    rate = round(fixed / decided, 4) if decided else None
    avoided = DoctorTokensAvoided(estimate_total=tokens, calls_skipped=skipped, coverage=coverage)
    return patterns, rate, avoided
