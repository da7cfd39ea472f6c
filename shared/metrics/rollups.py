"""Hourly rollups of the metric tables, so dashboard windows never scan a million rows.

Every write of a metric row adds its numbers to the row of its UTC hour in the same transaction
(an upsert), so the rollups are exactly as current as the rows. A window `[since, now]` is then
read as the raw rows of its partial first hour plus the rollups of every whole hour after it.
`rebuild` recomputes them from the raw rows (after a bulk import, or to check them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.models import (
    LlmUsageEvent,
    LlmUsageHourly,
    Phase6Hourly,
    Phase6Metric,
    TokenEfficiencyHourly,
    TokenEfficiencyMetric,
)

ROLLUP_MODELS = (LlmUsageHourly, TokenEfficiencyHourly, Phase6Hourly)


def hour_of(moment: datetime) -> datetime:
    """The UTC hour a timestamp falls in."""
    return moment.replace(minute=0, second=0, microsecond=0)


def first_whole_hour(since: datetime) -> datetime:
    """The first hour boundary at or after since: rollups cover [this, ...), raw rows the rest."""
    hour = hour_of(since)
    return hour if hour == since else hour + timedelta(hours=1)


def _upsert(session: Session, model: Any, keys: dict[str, Any], add: dict[str, Any]) -> None:
    """Add `add` to the rollup row at `keys`, creating it when missing."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(model)
    elif dialect == "sqlite":
        statement = sqlite.insert(model)
    else:  # pragma: no cover - the two supported databases
        raise RuntimeError(f"rollups do not support {dialect}")
    statement = statement.values(**keys, **add)
    table = model.__table__
    updates: dict[str, Any] = {}
    for name in add:
        current, extra = table.c[name], statement.excluded[name]
        # A nullable sum (cost) stays NULL until some row has a value, like SUM() does.
        updates[name] = (
            func.coalesce(current + extra, current, extra)
            if name == "cost_usd"
            else current + extra
        )
    session.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=updates))


def add_llm_usage(session: Session, row: LlmUsageEvent) -> None:
    """Count one LLM call in its hour."""
    _upsert(
        session,
        LlmUsageHourly,
        {
            "hour": hour_of(row.created_at),
            "role": row.role,
            "model": row.model,
            "action": row.action or "",
            "is_doctor_call": bool(row.is_doctor_call),
        },
        {
            "calls": 1,
            "prompt_tokens": row.prompt_tokens or 0,
            "completion_tokens": row.completion_tokens or 0,
            "total_tokens": row.total_tokens or 0,
            "cost_usd": row.cost_usd,
        },
    )


def add_token_efficiency(session: Session, row: TokenEfficiencyMetric) -> None:
    """Count one budgeted context in its hour."""
    _upsert(
        session,
        TokenEfficiencyHourly,
        {"hour": hour_of(row.created_at)},
        {
            "contexts": 1,
            "tokens_saved": row.tokens_saved_artifacts or 0,
            "substitutions": row.artifact_substitutions or 0,
        },
    )


def _phase6_keys(row: Phase6Metric) -> dict[str, Any]:
    return {
        "hour": hour_of(row.created_at),
        "pattern": row.failure_pattern_detected or "",
        "source": row.estimate_source or "",
        "skipped": bool(row.doctor_call_skipped),
    }


def add_phase6(session: Session, row: Phase6Metric) -> None:
    """Count one Phase6 row in its hour."""
    _upsert(
        session,
        Phase6Hourly,
        _phase6_keys(row),
        {
            "n": 1,
            "fixed": 1 if row.mitigation_fixed else 0,
            "decided": 0 if row.mitigation_fixed is None else 1,
            "coverage_n": row.estimate_coverage_n or 0,
            "tokens": row.doctor_tokens_avoided_estimate or 0,
        },
    )


def settle_phase6(session: Session, row: Phase6Metric, before: bool | None) -> None:
    """A Phase6 row's mitigation_fixed changed from `before` to its current value."""
    after = row.mitigation_fixed
    fixed = (1 if after else 0) - (1 if before else 0)
    decided = (0 if after is None else 1) - (0 if before is None else 1)
    if fixed or decided:
        _upsert(
            session,
            Phase6Hourly,
            _phase6_keys(row),
            {"n": 0, "fixed": fixed, "decided": decided, "coverage_n": 0, "tokens": 0},
        )


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmTotals:
    """Category 1 over a time range."""

    calls: int = 0
    doctor_calls: int = 0
    total_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    doctor_tokens: int = 0
    cost_usd: float | None = None

    def __add__(self, other: LlmTotals) -> LlmTotals:
        costs = [c for c in (self.cost_usd, other.cost_usd) if c is not None]
        return LlmTotals(
            self.calls + other.calls,
            self.doctor_calls + other.doctor_calls,
            self.total_tokens + other.total_tokens,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.doctor_tokens + other.doctor_tokens,
            sum(costs) if costs else None,
        )


@dataclass(frozen=True)
class Phase6Group:
    """Phase6 rows of one (pattern, source, skipped) group over a time range."""

    pattern: str
    source: str
    skipped: bool
    n: int
    fixed: int
    decided: int
    coverage_n: int
    tokens: int


def _int(value: Any) -> int:
    return int(value or 0)  # sums of bigint arrive as Decimal on PostgreSQL


def llm_totals_raw(session: Session, start: datetime, end: datetime) -> LlmTotals:
    """Category 1 from the raw rows of [start, end)."""
    e = LlmUsageEvent
    doctor = e.is_doctor_call.is_(True)
    row = session.execute(
        select(
            func.count(),
            func.sum(case((doctor, 1), else_=0)),
            func.sum(e.total_tokens),
            func.sum(e.prompt_tokens),
            func.sum(e.completion_tokens),
            func.sum(case((doctor, e.total_tokens), else_=0)),
            func.sum(e.cost_usd),
        ).where(e.created_at >= start, e.created_at < end)
    ).one()
    return _llm(row)


def llm_totals_rolled(session: Session, start_hour: datetime) -> LlmTotals:
    """Category 1 from the rollups of every hour from start_hour on."""
    h = LlmUsageHourly
    doctor = h.is_doctor_call.is_(True)
    row = session.execute(
        select(
            func.sum(h.calls),
            func.sum(case((doctor, h.calls), else_=0)),
            func.sum(h.total_tokens),
            func.sum(h.prompt_tokens),
            func.sum(h.completion_tokens),
            func.sum(case((doctor, h.total_tokens), else_=0)),
            func.sum(h.cost_usd),
        ).where(h.hour >= start_hour)
    ).one()
    return _llm(row)


def _llm(row: Any) -> LlmTotals:
    calls, doctor_calls, total, prompt, completion, doctor, cost = row
    return LlmTotals(
        _int(calls),
        _int(doctor_calls),
        _int(total),
        _int(prompt),
        _int(completion),
        _int(doctor),
        float(cost) if cost is not None else None,
    )


def artifacts_raw(session: Session, start: datetime, end: datetime) -> tuple[int, int]:
    """(tokens saved, substitutions) from the raw rows of [start, end)."""
    m = TokenEfficiencyMetric
    saved, subs = session.execute(
        select(func.sum(m.tokens_saved_artifacts), func.sum(m.artifact_substitutions)).where(
            m.created_at >= start, m.created_at < end
        )
    ).one()
    return _int(saved), _int(subs)


def artifacts_rolled(session: Session, start_hour: datetime) -> tuple[int, int]:
    """(tokens saved, substitutions) from the rollups from start_hour on."""
    h = TokenEfficiencyHourly
    saved, subs = session.execute(
        select(func.sum(h.tokens_saved), func.sum(h.substitutions)).where(h.hour >= start_hour)
    ).one()
    return _int(saved), _int(subs)


def phase6_raw(session: Session, start: datetime, end: datetime) -> Iterator[Phase6Group]:
    """Phase6 groups from the raw rows of [start, end)."""
    m = Phase6Metric
    pattern = func.coalesce(m.failure_pattern_detected, "")
    source = func.coalesce(m.estimate_source, "")
    skipped = m.doctor_call_skipped
    rows = session.execute(
        select(
            pattern,
            source,
            skipped,
            func.count(),
            func.sum(case((m.mitigation_fixed.is_(True), 1), else_=0)),
            func.sum(case((m.mitigation_fixed.is_not(None), 1), else_=0)),
            func.sum(m.estimate_coverage_n),
            func.sum(m.doctor_tokens_avoided_estimate),
        )
        .where(m.created_at >= start, m.created_at < end)
        .group_by(pattern, source, skipped)
    )
    for row in rows:
        yield _group(row)


def phase6_rolled(session: Session, start_hour: datetime | None = None) -> Iterator[Phase6Group]:
    """Phase6 groups from the rollups from start_hour on (all hours when None)."""
    h = Phase6Hourly
    query = select(
        h.pattern,
        h.source,
        h.skipped,
        func.sum(h.n),
        func.sum(h.fixed),
        func.sum(h.decided),
        func.sum(h.coverage_n),
        func.sum(h.tokens),
    ).group_by(h.pattern, h.source, h.skipped)
    if start_hour is not None:
        query = query.where(h.hour >= start_hour)
    for row in session.execute(query):
        yield _group(row)


def _group(row: Any) -> Phase6Group:
    pattern, source, skipped, n, fixed, decided, coverage_n, tokens = row
    return Phase6Group(
        str(pattern),
        str(source),
        bool(skipped),
        _int(n),
        _int(fixed),
        _int(decided),
        _int(coverage_n),
        _int(tokens),
    )


def merge_phase6(*parts: Iterable[Phase6Group]) -> list[Phase6Group]:
    """Sum groups with the same (pattern, source, skipped) across ranges."""
    merged: dict[tuple[str, str, bool], Phase6Group] = {}
    for part in parts:
        for g in part:
            key = (g.pattern, g.source, g.skipped)
            seen = merged.get(key)
            merged[key] = (
                g
                if seen is None
                else Phase6Group(
                    g.pattern,
                    g.source,
                    g.skipped,
                    seen.n + g.n,
                    seen.fixed + g.fixed,
                    seen.decided + g.decided,
                    seen.coverage_n + g.coverage_n,
                    seen.tokens + g.tokens,
                )
            )
    return list(merged.values())


# --- rebuilding --------------------------------------------------------------------------------


def _hour_sql(dialect: str) -> str:
    if dialect == "postgresql":
        # date_trunc on timestamptz truncates in the session's time zone; the rollups are UTC hours.
        return "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    # SQLite keeps UTC timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text.
    return "strftime('%Y-%m-%d %H:00:00.000000', created_at)"


def rebuild_statements(dialect: str) -> list[str]:
    """SQL that recomputes every rollup from the raw rows (used by rebuild and the migration)."""
    hour = _hour_sql(dialect)
    true = "true" if dialect == "postgresql" else "1"
    return [
        "DELETE FROM llm_usage_hourly",
        "DELETE FROM token_efficiency_hourly",
        "DELETE FROM phase6_hourly",
        f"""INSERT INTO llm_usage_hourly (hour, role, model, action, is_doctor_call, calls,
                prompt_tokens, completion_tokens, total_tokens, cost_usd)
            SELECT {hour}, role, model, coalesce(action, ''), is_doctor_call, count(*),
                   coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
                   coalesce(sum(total_tokens), 0), sum(cost_usd)
            FROM llm_usage_events GROUP BY 1, 2, 3, 4, 5""",  # noqa: S608 - constant SQL fragments
        f"""INSERT INTO token_efficiency_hourly (hour, contexts, tokens_saved, substitutions)
            SELECT {hour}, count(*), coalesce(sum(tokens_saved_artifacts), 0),
                   coalesce(sum(artifact_substitutions), 0)
            FROM token_efficiency_metrics GROUP BY 1""",  # noqa: S608 - constant SQL fragments
        f"""INSERT INTO phase6_hourly (hour, pattern, source, skipped, n, fixed, decided,
                coverage_n, tokens)
            SELECT {hour}, coalesce(failure_pattern_detected, ''), coalesce(estimate_source, ''),
                   doctor_call_skipped, count(*),
                   sum(CASE WHEN mitigation_fixed = {true} THEN 1 ELSE 0 END),
                   sum(CASE WHEN mitigation_fixed IS NOT NULL THEN 1 ELSE 0 END),
                   coalesce(sum(estimate_coverage_n), 0),
                   coalesce(sum(doctor_tokens_avoided_estimate), 0)
            FROM phase6_metrics GROUP BY 1, 2, 3, 4""",  # noqa: S608 - constant SQL fragments
    ]


def rebuild(session: Session) -> dict[str, int]:
    """Recompute every rollup from the raw rows; returns the rollup row count per table.

    Takes an exclusive lock on the rollups (PostgreSQL) so concurrent writers wait rather than
    add to rows that are about to be replaced.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(
            text(
                "LOCK TABLE llm_usage_hourly, token_efficiency_hourly, phase6_hourly "
                "IN EXCLUSIVE MODE"
            )
        )
    for statement in rebuild_statements(dialect):
        session.execute(text(statement))
    return {
        model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
        for model in ROLLUP_MODELS
    }


def clear(session: Session) -> None:
    """Remove every rollup row (tests and rebuild checks)."""
    for model in ROLLUP_MODELS:
        session.execute(delete(model))
