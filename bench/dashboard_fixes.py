"""Candidate fixes for the slow dashboard aggregates, measured on the bench data set.

Loads the same data as bench.dashboard (or reuses a database kept with --keep-db) and times, in
process and against the same database, the current query functions and each candidate change:

1. server-side generic plans (psycopg prepares a statement after 5 executions, PostgreSQL then
   plans `created_at >= $1` for an unknown value) versus `plan_cache_mode=force_custom_plan`;
2. one phase6_metrics scan instead of three (summary) or three (phase6-stats of a run);
3. hourly rollup tables read for whole hours, raw rows only for the partial first hour and
   the hour not yet rolled up;
4. covering indexes (index-only scans).

Every rewritten query is checked to return the same result as the current one.

    .venv/bin/python -m bench.dashboard_fixes [--db autopack_bench_xxx] [--rows 1000000] [--runs 2000]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from bench.dashboard import (
    PG_BASE,
    Case,
    bench_database,
    capture_statements,
    load,
    log,
    make_cases,
    short_sql,
)
from shared.db import make_engine, make_session_factory
from shared.metrics import queries
from shared.metrics.schemas import (
    ArtifactTokensAvoided,
    CoverageBucket,
    DashboardSummary,
    DoctorTokensAvoided,
    PatternCount,
    Phase6Stats,
    TokensSpent,
)
from shared.migrations import upgrade
from shared.settings import Settings

CUSTOM_PLANS = "-c plan_cache_mode=force_custom_plan"

# --- 2. one phase6_metrics scan ----------------------------------------------------------------

PHASE6_RUN_SQL = """
SELECT failure_pattern_detected, estimate_source, doctor_call_skipped,
       count(*) FILTER (WHERE failure_hardening_triggered) AS triggered,
       count(*) FILTER (WHERE mitigation_fixed) AS fixed,
       count(*) FILTER (WHERE doctor_called) AS doctor_calls,
       count(*) FILTER (WHERE intention_context_injected) AS injected,
       coalesce(sum(intention_context_chars), 0) AS chars,
       bool_or(plan_normalization_used) AS plan_used,
       count(*) AS n,
       coalesce(sum(estimate_coverage_n), 0) AS coverage_n,
       coalesce(sum(doctor_tokens_avoided_estimate), 0) AS tokens
FROM phase6_metrics WHERE run_id = :run_id
GROUP BY 1, 2, 3
"""

PHASE6_WINDOW_SQL = """
SELECT coalesce(failure_pattern_detected, '') AS pattern, coalesce(estimate_source, '') AS source,
       doctor_call_skipped AS skipped, count(*) AS n,
       count(*) FILTER (WHERE mitigation_fixed) AS fixed,
       count(*) FILTER (WHERE mitigation_fixed IS NOT NULL) AS decided,
       coalesce(sum(estimate_coverage_n), 0) AS coverage_n,
       coalesce(sum(doctor_tokens_avoided_estimate), 0) AS tokens
FROM phase6_metrics WHERE {where}
GROUP BY 1, 2, 3
"""


def phase6_stats_merged(session: Session, run_id: str) -> Phase6Stats:
    """phase6-stats of a run with one phase6_metrics statement instead of three."""
    phases = int(
        session.execute(
            text("SELECT count(*) FROM phases WHERE run_id = :run_id"), {"run_id": run_id}
        ).scalar_one()
    )
    triggered = fixed = doctor_calls = injected = chars = skipped = tokens = 0
    plan_used = False
    patterns: dict[str, int] = {}
    coverage: dict[str, CoverageBucket] = {}
    for row in session.execute(text(PHASE6_RUN_SQL), {"run_id": run_id}):
        triggered += row.triggered
        fixed += row.fixed
        doctor_calls += row.doctor_calls
        injected += row.injected
        chars += row.chars
        plan_used = plan_used or bool(row.plan_used)
        if row.failure_pattern_detected is not None:
            pattern = str(row.failure_pattern_detected)
            patterns[pattern] = patterns.get(pattern, 0) + row.n
        if row.doctor_call_skipped:
            source = row.estimate_source or "unknown"
            bucket = coverage.setdefault(source, CoverageBucket())
            bucket.count += row.n
            bucket.total_n += row.coverage_n
            skipped += row.n
            tokens += row.tokens
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


def phase6_window(rows: Any, top: int) -> tuple[list[PatternCount], float | None, Any]:
    """Top patterns, mitigation success and Doctor tokens avoided from phase6 group rows."""
    per_pattern: dict[str, list[int]] = {}
    fixed = decided = skipped = tokens = 0
    coverage: dict[str, CoverageBucket] = {}
    for row in rows:
        n, row_fixed = int(row.n), int(row.fixed)  # sums of bigint come back as Decimal
        fixed += row_fixed
        decided += int(row.decided)
        if row.pattern:
            counts = per_pattern.setdefault(row.pattern, [0, 0])
            counts[0] += n
            counts[1] += row_fixed
        if row.skipped:
            bucket = coverage.setdefault(row.source or "unknown", CoverageBucket())
            bucket.count += n
            bucket.total_n += int(row.coverage_n)
            skipped += n
            tokens += int(row.tokens)
    ranked = sorted(per_pattern.items(), key=lambda item: (-item[1][0], item[0]))[:top]
    patterns = [PatternCount(pattern_id=p, triggered=c, fixed=f) for p, (c, f) in ranked]
    rate = round(fixed / decided, 4) if decided else None
    avoided = DoctorTokensAvoided(estimate_total=tokens, calls_skipped=skipped, coverage=coverage)
    return patterns, rate, avoided


def window_counts(session: Session, since: datetime) -> tuple[dict[str, int], int, int]:
    """Runs by status, phases and attempts since a time (the current statements, unchanged)."""
    runs = {
        str(status): int(count)
        for status, count in session.execute(
            text("SELECT status, count(*) FROM runs WHERE created_at >= :s GROUP BY status"),
            {"s": since},
        )
    }
    phases = session.execute(
        text(
            "SELECT count(*) FROM phases JOIN runs ON phases.run_id = runs.id "
            "WHERE runs.created_at >= :s"
        ),
        {"s": since},
    ).scalar_one()
    attempts = session.execute(
        text("SELECT count(*) FROM attempts WHERE started_at >= :s"), {"s": since}
    ).scalar_one()
    return runs, int(phases), int(attempts)


def summary_merged(session: Session, since: datetime, top: int = 10) -> DashboardSummary:
    """The summary with one phase6_metrics scan instead of three (no schema change)."""
    runs, phases, attempts = window_counts(session, since)
    rows = session.execute(text(PHASE6_WINDOW_SQL.format(where="created_at >= :s")), {"s": since})
    patterns, rate, avoided = phase6_window(rows, top)
    return DashboardSummary(
        since=since,
        runs=runs,
        phases=phases,
        attempts=attempts,
        tokens_spent=queries.tokens_spent(session, since=since),
        artifact_tokens_avoided=queries.artifact_tokens_avoided(session, since=since),
        doctor_tokens_avoided=avoided,
        top_failure_patterns=patterns,
        mitigation_success_rate=rate,
    )


# --- 3. hourly rollups -------------------------------------------------------------------------

ROLLUP_DDL = [
    """CREATE TABLE llm_usage_hourly (
        hour timestamptz PRIMARY KEY,
        calls bigint NOT NULL, doctor_calls bigint NOT NULL, total_tokens bigint NOT NULL,
        prompt_tokens bigint NOT NULL, completion_tokens bigint NOT NULL,
        doctor_tokens bigint NOT NULL, cost_usd double precision)""",
    """CREATE TABLE token_efficiency_hourly (
        hour timestamptz PRIMARY KEY,
        tokens_saved bigint NOT NULL, substitutions bigint NOT NULL)""",
    """CREATE TABLE phase6_hourly (
        hour timestamptz NOT NULL, pattern varchar(100) NOT NULL, source varchar(16) NOT NULL,
        skipped boolean NOT NULL, n bigint NOT NULL, fixed bigint NOT NULL,
        decided bigint NOT NULL, coverage_n bigint NOT NULL, tokens bigint NOT NULL,
        PRIMARY KEY (hour, pattern, source, skipped))""",
]

# What a periodic job (or the writer, with ON CONFLICT DO UPDATE) maintains: closed hours only.
ROLLUP_FILL = [
    """INSERT INTO llm_usage_hourly
       SELECT date_trunc('hour', created_at), count(*), count(*) FILTER (WHERE is_doctor_call),
              sum(total_tokens), sum(prompt_tokens), sum(completion_tokens),
              coalesce(sum(total_tokens) FILTER (WHERE is_doctor_call), 0), sum(cost_usd)
       FROM llm_usage_events WHERE created_at < :w GROUP BY 1""",
    """INSERT INTO token_efficiency_hourly
       SELECT date_trunc('hour', created_at), sum(tokens_saved_artifacts),
              sum(artifact_substitutions)
       FROM token_efficiency_metrics WHERE created_at < :w GROUP BY 1""",
    """INSERT INTO phase6_hourly
       SELECT date_trunc('hour', created_at), coalesce(failure_pattern_detected, ''),
              coalesce(estimate_source, ''), doctor_call_skipped, count(*),
              count(*) FILTER (WHERE mitigation_fixed),
              count(*) FILTER (WHERE mitigation_fixed IS NOT NULL),
              coalesce(sum(estimate_coverage_n), 0), coalesce(sum(doctor_tokens_avoided_estimate), 0)
       FROM phase6_metrics WHERE created_at < :w GROUP BY 1, 2, 3, 4""",
]

# Raw rows outside the rolled-up hours [b, w): [since, min(b, w)) and [max(w, since), now], as
# two plain range scans of the created_at index (an OR of both is planned as one long range).
HEAD = "created_at >= :s AND created_at < :head_end"
TAIL = "created_at >= :tail_start"

LLM_ROLLUP_SQL = f"""
SELECT coalesce(sum(calls), 0) AS calls, coalesce(sum(doctor_calls), 0) AS doctor_calls,
       coalesce(sum(total_tokens), 0) AS total, coalesce(sum(prompt_tokens), 0) AS prompt,
       coalesce(sum(completion_tokens), 0) AS completion,
       coalesce(sum(doctor_tokens), 0) AS doctor, sum(cost_usd) AS cost
FROM (
    SELECT calls, doctor_calls, total_tokens, prompt_tokens, completion_tokens, doctor_tokens,
           cost_usd
    FROM llm_usage_hourly WHERE hour >= :b AND hour < :w
    UNION ALL
    SELECT count(*), count(*) FILTER (WHERE is_doctor_call), coalesce(sum(total_tokens), 0),
           coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
           coalesce(sum(total_tokens) FILTER (WHERE is_doctor_call), 0), sum(cost_usd)
    FROM llm_usage_events WHERE {HEAD}
    UNION ALL
    SELECT count(*), count(*) FILTER (WHERE is_doctor_call), coalesce(sum(total_tokens), 0),
           coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
           coalesce(sum(total_tokens) FILTER (WHERE is_doctor_call), 0), sum(cost_usd)
    FROM llm_usage_events WHERE {TAIL}
) AS u
"""

ARTIFACTS_ROLLUP_SQL = f"""
SELECT coalesce(sum(saved), 0) AS saved, coalesce(sum(subs), 0) AS subs
FROM (
    SELECT tokens_saved AS saved, substitutions AS subs
    FROM token_efficiency_hourly WHERE hour >= :b AND hour < :w
    UNION ALL
    SELECT sum(tokens_saved_artifacts), sum(artifact_substitutions)
    FROM token_efficiency_metrics WHERE {HEAD}
    UNION ALL
    SELECT sum(tokens_saved_artifacts), sum(artifact_substitutions)
    FROM token_efficiency_metrics WHERE {TAIL}
) AS u
"""

PHASE6_ROLLUP_SQL = f"""
SELECT pattern, source, skipped, sum(n) AS n, sum(fixed) AS fixed, sum(decided) AS decided,
       sum(coverage_n) AS coverage_n, sum(tokens) AS tokens
FROM (
    SELECT pattern, source, skipped, n, fixed, decided, coverage_n, tokens
    FROM phase6_hourly WHERE hour >= :b AND hour < :w
    UNION ALL
    {PHASE6_WINDOW_SQL.format(where=HEAD)}
    UNION ALL
    {PHASE6_WINDOW_SQL.format(where=TAIL)}
) AS u
GROUP BY 1, 2, 3
"""


def first_whole_hour(since: datetime) -> datetime:
    hour = since.replace(minute=0, second=0, microsecond=0)
    return hour if hour == since else hour + timedelta(hours=1)


def summary_rollup(
    session: Session, since: datetime, watermark: datetime, top: int = 10
) -> DashboardSummary:
    """The summary from hourly rollups plus the raw rows of the partial hours."""
    runs, phases, attempts = window_counts(session, since)
    first = first_whole_hour(since)
    params = {
        "s": since,
        "b": first,
        "w": watermark,
        "head_end": min(first, watermark),
        "tail_start": max(watermark, since),
    }
    llm = session.execute(text(LLM_ROLLUP_SQL), params).one()
    artifacts = session.execute(text(ARTIFACTS_ROLLUP_SQL), params).one()
    patterns, rate, avoided = phase6_window(session.execute(text(PHASE6_ROLLUP_SQL), params), top)
    return DashboardSummary(
        since=since,
        runs=runs,
        phases=phases,
        attempts=attempts,
        tokens_spent=TokensSpent(
            total_tokens=int(llm.total),
            prompt_tokens=int(llm.prompt),
            completion_tokens=int(llm.completion),
            doctor_tokens=int(llm.doctor),
            llm_calls=int(llm.calls),
            doctor_calls=int(llm.doctor_calls),
            cost_usd=round(float(llm.cost), 6) if llm.cost is not None else None,
        ),
        artifact_tokens_avoided=ArtifactTokensAvoided(
            tokens_saved=int(artifacts.saved), substitutions=int(artifacts.subs)
        ),
        doctor_tokens_avoided=avoided,
        top_failure_patterns=patterns,
        mitigation_success_rate=rate,
    )


# --- 1. generic versus custom plans -------------------------------------------------------------


@dataclass
class PlanRow:
    """One statement of the summary run as a prepared statement under both plan cache modes."""

    case: str
    sql: str
    custom_ms: float
    generic_ms: float
    custom_scan: str
    generic_scan: str


def scan_nodes(plan: dict[str, Any]) -> str:
    """The scan nodes of a plan, e.g. 'Parallel Seq Scan on llm_usage_events'."""
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "Scan" in node["Node Type"] and "Relation Name" in node:
            found.append(f"{node['Node Type']} on {node['Relation Name']}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    return ", ".join(found)


def plan_modes(engine: Engine, sessions: sessionmaker[Session], case: Case) -> list[PlanRow]:
    """Each statement PREPAREd, then EXPLAIN ANALYZE EXECUTE with custom and generic plans.

    psycopg prepares a statement after 5 executions on a connection and PostgreSQL may then
    use a generic plan, planned without the value of `since`: this is what the API ends up with.
    """
    results: list[PlanRow] = []
    for sql, params in capture_statements(engine, sessions, case):
        if not isinstance(params, dict) or "created_at" not in sql:
            continue
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
        index = {name: i + 1 for i, name in enumerate(names)}
        prepared = sql
        for name, number in index.items():
            prepared = prepared.replace(f"%({name})s", f"${number}")
        prepared = prepared.replace("%%", "%")
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            values = ", ".join(pgsql.Literal(params[n]).as_string(raw) for n in names)
            raw.execute(f"PREPARE bench_q AS {prepared}")
            timings: dict[str, tuple[float, str]] = {}
            for mode in ("force_custom_plan", "force_generic_plan"):
                raw.execute(f"SET plan_cache_mode = {mode}")
                samples: list[float] = []
                scans = ""
                for _ in range(3):
                    row = raw.execute(
                        f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE bench_q({values})"
                    ).fetchone()
                    assert row is not None
                    plan = row[0][0]
                    samples.append(float(plan["Planning Time"]) + float(plan["Execution Time"]))
                    scans = scan_nodes(plan["Plan"])
                timings[mode] = (statistics.median(samples), scans)
            raw.execute("DEALLOCATE bench_q")
            raw.execute("RESET plan_cache_mode")
            raw.rollback()
        results.append(
            PlanRow(
                case.scope,
                short_sql(sql, 70),
                timings["force_custom_plan"][0],
                timings["force_generic_plan"][0],
                timings["force_custom_plan"][1],
                timings["force_generic_plan"][1],
            )
        )
        log(
            f"{case.scope}: custom {results[-1].custom_ms:.1f} ms, "
            f"generic {results[-1].generic_ms:.1f} ms: {results[-1].sql}"
        )
    return results


def plan_report(rows: list[PlanRow]) -> str:
    lines = [
        "| window | statement | custom plan ms | generic plan ms | custom plan scans "
        "| generic plan scans |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | `{r.sql}` | {r.custom_ms:.1f} | {r.generic_ms:.1f} "
            f"| {r.custom_scan} | {r.generic_scan} |"
        )
    return "\n".join(lines)


# --- measurement -------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured variant: median wall time of the call, in process."""

    change: str
    case: str
    ms: float
    n: int


def timed(sessions: sessionmaker[Session], call: Callable[[Session], object], reps: int) -> Row:
    """Median wall time of call (a fresh session each time) after 12 warm-up calls.

    Twelve warm-up calls let psycopg prepare the statements (after 5 executions) and PostgreSQL
    settle on a generic or custom plan (after 5 more), as in a long-running API process.
    """
    for _ in range(12):
        with sessions() as session:
            call(session)
    samples: list[float] = []
    deadline = time.monotonic() + 20
    for _ in range(reps):
        t0 = time.perf_counter()
        with sessions() as session:
            call(session)
        samples.append((time.perf_counter() - t0) * 1000)
        if time.monotonic() > deadline:
            break
    return Row("", "", statistics.median(samples), len(samples))


def same(label: str, expected: object, actual: object) -> None:
    """Fail loudly when a rewritten query does not return what the current one does."""
    left = _rounded(expected.model_dump() if hasattr(expected, "model_dump") else expected)
    right = _rounded(actual.model_dump() if hasattr(actual, "model_dump") else actual)
    if left != right:
        raise AssertionError(f"{label}: results differ\n{left}\n{right}")


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


@contextmanager
def engines(url: str) -> Iterator[tuple[Engine, Engine]]:
    """The default engine (as the API builds it) and one forcing custom plans."""
    settings = Settings(database_url=url, data_dir=Path(tempfile.gettempdir()))
    default = make_engine(settings)
    custom = make_engine(settings, connect_args={"options": CUSTOM_PLANS})
    try:
        yield default, custom
    finally:
        default.dispose()
        custom.dispose()


def run_ids(engine: Engine) -> tuple[str, str]:
    """The typical and hot runs of bench.dashboard's data set (median and largest)."""
    with engine.connect() as conn:
        hot = conn.execute(
            text("SELECT run_id FROM phase6_metrics GROUP BY run_id ORDER BY count(*) DESC LIMIT 1")
        ).scalar_one()
        typical = conn.execute(
            text(
                "SELECT id FROM runs ORDER BY (SELECT count(*) FROM phase6_metrics p "
                "WHERE p.run_id = runs.id), id OFFSET (SELECT count(*) / 2 FROM runs) LIMIT 1"
            )
        ).scalar_one()
    return str(typical), str(hot)


def experiments(url: str, reps: int) -> tuple[list[Row], list[PlanRow]]:
    rows: list[Row] = []
    plans: list[PlanRow] = []

    def add(change: str, case: str, row: Row) -> None:
        row.change, row.case = change, case
        rows.append(row)
        log(f"{change} / {case}: {row.ms:.1f} ms (median of {row.n})")

    now = datetime.now(UTC)
    windows = {label: now - delta for label, delta in WINDOWS.items()}
    with engines(url) as (default, custom):
        plain, forced = make_session_factory(default), make_session_factory(custom)
        typical, hot = run_ids(default)
        runs = {"typical run": typical, "hot run": hot}

        # Results must not change.
        with forced() as session:
            for run_id in runs.values():
                same(
                    "phase6-stats",
                    queries.phase6_stats(session, run_id),
                    phase6_stats_merged(session, run_id),
                )
            for since in windows.values():
                same(
                    "summary merged",
                    queries.summary(session, since),
                    summary_merged(session, since),
                )

        for case in make_cases(typical, hot, now):
            if case.endpoint == "summary" and case.scope != "since 24h":
                plans += plan_modes(default, plain, case)

        for label, run_id in runs.items():
            add(
                "current phase6_stats",
                label,
                timed(plain, partial(queries.phase6_stats, run_id=run_id), reps),
            )
            add(
                "phase6_stats, one phase6 statement",
                label,
                timed(plain, partial(phase6_stats_merged, run_id=run_id), reps),
            )
        for label, since in windows.items():
            add(
                "current summary",
                label,
                timed(plain, partial(queries.summary, since=since), reps),
            )
        for label, since in windows.items():
            add(
                "summary, force_custom_plan",
                label,
                timed(forced, partial(queries.summary, since=since), reps),
            )
        for label, since in windows.items():
            add(
                "summary, force_custom_plan + one phase6 scan",
                label,
                timed(forced, partial(summary_merged, since=since), reps),
            )

        # Hourly rollups of every closed hour.
        watermark = now.replace(minute=0, second=0, microsecond=0)
        started = time.monotonic()
        with default.begin() as conn:
            for ddl in ROLLUP_DDL:
                conn.execute(text(ddl))
            for fill in ROLLUP_FILL:
                conn.execute(text(fill), {"w": watermark})
        with default.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("ANALYZE llm_usage_hourly, token_efficiency_hourly, phase6_hourly")
            )
            sizes = {
                table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("llm_usage_hourly", "token_efficiency_hourly", "phase6_hourly")
            }
        log(f"rollups built in {time.monotonic() - started:.1f}s: {sizes}")
        with forced() as session:
            for since in windows.values():
                same(
                    "summary rollup",
                    queries.summary(session, since),
                    summary_rollup(session, since, watermark),
                )
        for label, since in windows.items():
            add(
                "summary from hourly rollups",
                label,
                timed(plain, partial(summary_rollup, since=since, watermark=watermark), reps),
            )

        # Covering indexes: index-only scans for the per-run and the window aggregates.
        started = time.monotonic()
        with default.connect() as conn:
            auto = conn.execution_options(isolation_level="AUTOCOMMIT")
            for ddl in COVERING_INDEXES:
                auto.execute(text(ddl))
            auto.execute(text("VACUUM (ANALYZE) phase6_metrics, llm_usage_events"))
        log(f"covering indexes built in {time.monotonic() - started:.1f}s")
        for label, run_id in runs.items():
            add(
                "phase6_stats, one statement + covering index",
                label,
                timed(plain, partial(phase6_stats_merged, run_id=run_id), reps),
            )
        for label, since in windows.items():
            add(
                "summary, force_custom_plan + covering indexes",
                label,
                timed(forced, partial(queries.summary, since=since), reps),
            )
    return rows, plans


WINDOWS = {
    "since 24h": timedelta(hours=24),
    "since 7d": timedelta(days=7),
    "since 30d": timedelta(days=30),
}

COVERING_INDEXES = [
    "CREATE INDEX ix_phase6_metrics_run_id_cover ON phase6_metrics (run_id) INCLUDE "
    "(failure_hardening_triggered, failure_pattern_detected, mitigation_fixed, doctor_called, "
    "doctor_call_skipped, estimate_source, estimate_coverage_n, doctor_tokens_avoided_estimate, "
    "intention_context_injected, intention_context_chars, plan_normalization_used)",
    "CREATE INDEX ix_llm_usage_events_created_at_cover ON llm_usage_events (created_at) INCLUDE "
    "(total_tokens, prompt_tokens, completion_tokens, is_doctor_call, cost_usd)",
]


def report(rows: list[Row]) -> str:
    cases = list(dict.fromkeys(r.case for r in rows))
    changes = list(dict.fromkeys(r.change for r in rows))
    by = {(r.change, r.case): r for r in rows}
    lines = [
        "| change (in-process wall time, median ms) | " + " | ".join(cases) + " |",
        "|---|" + "---:|" * len(cases),
    ]
    for change in changes:
        cells = [f"{by[(change, c)].ms:.1f}" if (change, c) in by else "" for c in cases]
        lines.append(f"| {change} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", help="a database kept by `bench.dashboard --keep-db` (modified)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--hot-rows", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=30, help="timed calls per variant")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.db:
        rows, plans = experiments(
            f"postgresql+psycopg://{PG_BASE.split('://', 1)[1]}/{args.db}", args.reps
        )
    else:
        with bench_database(args.keep_db) as url:
            upgrade(Settings(database_url=url, data_dir=Path(tempfile.gettempdir())))
            load(url, args.runs, args.rows, args.hot_rows)
            rows, plans = experiments(url, args.reps)
    print()
    print(plan_report(plans))
    print()
    print(report(rows))
    print()
    print(f"Total time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
