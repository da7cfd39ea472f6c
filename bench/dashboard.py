"""Dashboard latency on a PostgreSQL database holding about a million metric rows.

Creates its own database, migrates it, bulk-loads realistic data with server-side SQL, starts the
real API process and measures every dashboard endpoint over loopback HTTP, then times the same
aggregates directly and with EXPLAIN ANALYZE to separate database time from HTTP overhead.

    .venv/bin/python -m bench.dashboard [--rows 1000000] [--runs 2000] [--requests 200] [--keep-db]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared import auth
from shared.db import make_engine, make_session_factory, transaction
from shared.metrics import queries, rollups
from shared.migrations import upgrade
from shared.runs import repository
from shared.settings import Settings

PG_ADMIN = os.environ.get("AUTOPACK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN.rsplit("/", 1)[0]
BROKER_URL = os.environ.get("AUTOPACK_BENCH_BROKER", "redis://127.0.0.1:6379/15")
WELL_UNDER_MS = 50.0  # "well under 100 ms": at most half the budget at p99
BUDGET_MS = 100.0

# Share of the non-hot metric rows per table (the hot run gets --hot-rows in each table).
TABLE_SHARES = {
    "llm_usage_events": 0.40,
    "token_efficiency_metrics": 0.25,
    "phase6_metrics": 0.20,
    "error_logs": 0.15,
}

PATTERNS = (
    "ARRAY['python_missing_dep', 'transient_network', 'missing_test_discovery', "
    "'node_missing_dep', 'wrong_working_dir', 'permission_error', 'stale_git_index_lock', "
    "'scope_mismatch', 'flaky_test_timeout', 'port_in_use', 'disk_full', 'oom_killed']"
)

# One row per run: its id, start, duration and phase count. Run 0 is the hot run (72 h long).
# $RUNS, $HOT and $N are replaced by integers (statements with parameters cannot be CREATE ... AS).
RUNS_SQL = """
CREATE TEMP TABLE bench_runs AS
SELECT i AS idx,
       'run-' || substr(md5('bench-' || i), 1, 16) AS id,
       CASE WHEN i = 0 THEN now() - interval '72 hours'
            ELSE now() - random() * interval '30 days' END AS created_at,
       CASE WHEN i = 0 THEN interval '72 hours'
            ELSE interval '1 minute' * (5 + 175 * power(random(), 2)) END AS span,
       CASE WHEN i = 0 THEN 40 ELSE 1 + floor(random() * 8)::int END AS nphases,
       random() AS r
FROM generate_series(0, $RUNS - 1) AS i;
CREATE UNIQUE INDEX ON bench_runs (idx);
ANALYZE bench_runs;
INSERT INTO runs (id, repo, ref, goal, spec, spec_hash, labels, status, created_at, updated_at,
                  started_at, finished_at, enqueued_at, lease_token, cancel_requested)
SELECT id, 'repo-' || mod(idx, 25), 'main',
       'Benchmark run ' || idx || ': make the test suite pass',
       json_build_object('goal', 'bench', 'phases', nphases), md5(id), '{}'::json,
       CASE WHEN created_at + span > now() THEN 'running'
            WHEN r < 0.72 THEN 'succeeded' WHEN r < 0.90 THEN 'failed'
            WHEN r < 0.96 THEN 'cancelled' ELSE 'timed_out' END,
       created_at, least(now(), created_at + span), created_at + interval '1 second',
       CASE WHEN created_at + span > now() THEN NULL ELSE created_at + span END,
       created_at, 1, false
FROM bench_runs ORDER BY created_at;
INSERT INTO phases (run_id, position, phase_id, name, kind, spec, max_attempts, timeout_s,
                    status, attempts_count, started_at, finished_at)
SELECT b.id, p, 'p' || lpad(p::text, 2, '0'), 'Phase ' || p,
       (ARRAY['shell', 'validate', 'patch'])[1 + floor(random() * 3)::int], '{}'::json, 3, 900,
       CASE WHEN b.created_at + b.span * p / b.nphases > now() THEN 'running'
            ELSE 'succeeded' END,
       CASE WHEN random() < 0.75 THEN 1 WHEN random() < 0.8 THEN 2 ELSE 3 END,
       least(now(), b.created_at + b.span * (p - 1) / b.nphases),
       least(now(), b.created_at + b.span * p / b.nphases)
FROM bench_runs AS b CROSS JOIN LATERAL generate_series(1, b.nphases) AS p
ORDER BY b.created_at, p;
INSERT INTO attempts (run_id, phase_pk, number, worker, lease_token, status, started_at,
                      finished_at, exit_code, commands)
SELECT ph.run_id, ph.pk, n, 'worker-' || mod(ph.pk, 4) || '@bench', 1,
       CASE WHEN n < ph.attempts_count THEN 'failed' ELSE 'succeeded' END,
       ph.started_at + (ph.finished_at - ph.started_at) * (n - 1) / ph.attempts_count,
       ph.started_at + (ph.finished_at - ph.started_at) * n / ph.attempts_count,
       CASE WHEN n < ph.attempts_count THEN 1 ELSE 0 END, '[]'::json
FROM phases AS ph CROSS JOIN LATERAL generate_series(1, ph.attempts_count) AS n
ORDER BY 7;
"""

# The first %(hot)s rows go to the hot run; the others to run 1 + floor((runs - 1) * u^3):
# a few runs get thousands of rows, the median run under a hundred. A row's time is a uniform
# point of its run's span, and its phase is the phase running at that time.
ROWS_CTE = """
WITH s AS MATERIALIZED (
    SELECT CASE WHEN g <= $HOT THEN 0
                ELSE 1 + floor(($RUNS - 1) * power(random(), 3))::int END AS idx,
           random() AS t, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
           random() AS r5, random() AS r6
    FROM generate_series(1, $N) AS g
), m AS MATERIALIZED (
    SELECT b.id AS run_id,
           'p' || lpad((1 + least(b.nphases - 1, floor(s.t * b.nphases)))::int::text, 2, '0')
               AS phase_id,
           least(now(), b.created_at + s.t * b.span) AS created_at,
           s.r1, s.r2, s.r3, s.r4, s.r5, s.r6
    FROM s JOIN bench_runs AS b USING (idx)
)
"""

LOAD_SQL = {
    "llm_usage_events": ROWS_CTE
    + """
INSERT INTO llm_usage_events (run_id, phase_id, attempt, provider, model, role, prompt_tokens,
    completion_tokens, total_tokens, is_doctor_call, doctor_model_tier, action, cost_usd,
    latency_ms, error, created_at)
SELECT run_id, phase_id, attempt, provider, model, role, pt, ct, pt + ct, doctor,
       CASE WHEN doctor THEN CASE WHEN r2 < 0.2 THEN 'strong' ELSE 'cheap' END END,
       CASE WHEN doctor THEN (ARRAY['retry', 'retry_with_command', 'retry_with_patch',
                                    'give_up'])[1 + floor(r3 * 4)::int] END,
       round(((pt * 0.15 + ct * 0.60) / 1e6)::numeric, 6)::float8,
       (300 + 9000 * r4 * r4)::int,
       CASE WHEN r5 > 0.98 THEN 'provider timeout' END,
       created_at
FROM (
    SELECT m.*, r1 < 0.30 AS doctor,
           1 + floor(r6 * 2)::int AS attempt,
           CASE WHEN r2 < 0.6 THEN 'openai' ELSE 'anthropic' END AS provider,
           CASE WHEN r2 < 0.6 THEN 'gpt-4o-mini' ELSE 'claude-3-5-haiku' END AS model,
           CASE WHEN r1 < 0.30 THEN 'doctor' WHEN r3 < 0.5 THEN 'builder'
                WHEN r3 < 0.8 THEN 'planner' ELSE 'auditor' END AS role,
           (800 + 24000 * r4 * r4)::int AS pt,
           (60 + 2500 * r5)::int AS ct
    FROM m
) AS x
ORDER BY created_at
""",
    "token_efficiency_metrics": ROWS_CTE
    + """
INSERT INTO token_efficiency_metrics (run_id, phase_id, role, context_budget_tokens,
    context_used_tokens, files_kept, files_omitted, artifact_substitutions,
    tokens_saved_artifacts, created_at)
SELECT run_id, phase_id,
       CASE WHEN r1 < 0.3 THEN 'doctor' WHEN r1 < 0.8 THEN 'builder' ELSE 'planner' END,
       budget, (budget * (0.35 + 0.6 * r3))::int,
       1 + floor(40 * r4)::int, floor(20 * r4 * r5)::int, subs,
       subs * (200 + floor(2800 * r6)::int), created_at
FROM (
    SELECT m.*, (ARRAY[8000, 16000, 32000])[1 + floor(r2 * 3)::int] AS budget,
           floor(7 * r5 * r5)::int AS subs
    FROM m
) AS x
ORDER BY created_at
""",
    "phase6_metrics": ROWS_CTE
    + f"""
INSERT INTO phase6_metrics (run_id, phase_id, attempt, failure_hardening_triggered,
    failure_pattern_detected, failure_hardening_mitigated, mitigation_fixed, mitigation_actions,
    doctor_called, doctor_action, doctor_call_skipped, doctor_tokens_avoided_estimate,
    estimate_coverage_n, estimate_source, phase_outcome, retry_count, duration_s,
    intention_context_injected, intention_context_chars, intention_context_source,
    plan_normalization_used, plan_normalization_confidence, plan_normalization_warnings,
    plan_deliverables_count, plan_scope_size_bytes, created_at)
SELECT run_id, phase_id, 1 + floor(3 * r6)::int, triggered,
       CASE WHEN triggered THEN ({PATTERNS})[1 + floor(12 * r2 * r2)::int] END,
       mitigated, CASE WHEN mitigated THEN r4 < 0.65 END,
       CASE WHEN mitigated THEN '["retry"]'::json END,
       doctor, CASE WHEN doctor THEN 'retry_with_patch' END,
       skipped, CASE WHEN skipped THEN (8000 + 8000 * r5)::int END,
       CASE WHEN skipped THEN CASE WHEN r3 < 0.5 THEN 100 WHEN r3 < 0.85
                                   THEN 3 + floor(20 * r6)::int ELSE 0 END END,
       CASE WHEN skipped THEN CASE WHEN r3 < 0.5 THEN 'global' WHEN r3 < 0.85
                                   THEN 'run_local' ELSE 'fallback' END END,
       CASE WHEN r4 < 0.8 THEN 'succeeded' ELSE 'failed' END, floor(4 * r6)::int,
       round((1 + 600 * r5 * r5)::numeric, 2)::float8,
       r3 < 0.7, CASE WHEN r3 < 0.7 THEN 500 + floor(5500 * r6)::int END,
       CASE WHEN r3 < 0.7 THEN CASE WHEN r6 < 0.6 THEN 'goal+anchor' ELSE 'goal' END END,
       r5 < 0.2, CASE WHEN r5 < 0.2 THEN round(r6::numeric, 3)::float8 END,
       CASE WHEN r5 < 0.2 THEN floor(4 * r2)::int END,
       CASE WHEN r5 < 0.2 THEN 1 + floor(9 * r4)::int END,
       CASE WHEN r5 < 0.2 THEN 200 + floor(20000 * r6)::int END,
       created_at
FROM (
    SELECT m.*, r1 < 0.6 AS triggered, r1 < 0.42 AS mitigated, r5 > 0.7 AS doctor,
           r1 < 0.42 AND r5 <= 0.7 AS skipped
    FROM m
) AS x
ORDER BY created_at
""",
    "error_logs": ROWS_CTE
    + f"""
INSERT INTO error_logs (run_id, phase_id, attempt, error_type, failure_class, message,
    normalized_message, signature, sample, hardening_caught, pattern_id, created_at)
SELECT run_id, phase_id, 1 + floor(3 * r6)::int, error_type,
       (ARRAY['environment', 'test', 'timeout', 'infrastructure', 'unknown'])
           [1 + floor(5 * r3)::int],
       error_type || ': step failed on item ' || floor(10000 * r4)::int
           || ' while running the test suite of the repository (exit status 1)',
       error_type || ': step failed on item <n> while running the test suite (exit status <n>)',
       md5(error_type || floor(40 * r2 * r2)::int),
       repeat('Traceback (most recent call last): line ' || floor(900 * r4)::int || E'\\n', 6),
       caught, CASE WHEN caught THEN ({PATTERNS})[1 + floor(12 * r2 * r2)::int] END,
       created_at
FROM (
    SELECT m.*, r1 < 0.55 AS caught,
           (ARRAY['ModuleNotFoundError', 'AssertionError', 'TimeoutError', 'PermissionError',
                  'CalledProcessError', 'ConnectionError'])[1 + floor(6 * r5)::int] AS error_type
    FROM m
) AS x
ORDER BY created_at
""",
}


@dataclass
class Statement:
    """One SQL statement an aggregate executed, with its EXPLAIN ANALYZE time."""

    case: str
    sql: str
    params: Any
    total_ms: float
    jit_ms: float


@dataclass
class Case:
    """One measured endpoint call: its path and query, and the aggregate it runs."""

    endpoint: str
    scope: str
    path: str
    params: dict[str, str]
    call: Callable[[Session], object]
    rows: int = 0
    http_ms: list[float] = field(default_factory=list)
    direct_ms: list[float] = field(default_factory=list)
    sql_ms: float = 0.0
    jit_ms: float = 0.0
    statements: int = 0
    explained: list[Statement] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- database -----------------------------------------------------------------------------------


@contextmanager
def bench_database(keep: bool) -> Iterator[str]:
    """A fresh database (SQLAlchemy URL); dropped on exit unless keep."""
    name = f"autopack_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    log(f"created database {name}")
    try:
        yield f"postgresql+psycopg://{PG_BASE.split('://', 1)[1]}/{name}"
    finally:
        if keep:
            log(f"kept database {name} (--keep-db)")
        else:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"dropped database {name}")


def libpq_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def fill(sql: str, **values: int) -> str:
    """The SQL with $NAME replaced by integers (validated as int, so safe to inline)."""
    for name, value in values.items():
        sql = sql.replace(f"${name.upper()}", str(int(value)))
    return sql


def load(url: str, runs: int, rows: int, hot_rows: int) -> tuple[str, str]:
    """Bulk-load runs, phases, attempts and metric rows; returns (typical run id, hot run id)."""
    rest = rows - 4 * hot_rows
    if rest < 0:
        raise SystemExit("--rows must be at least 4 x --hot-rows")
    counts = {table: int(rest * share) for table, share in TABLE_SHARES.items()}
    counts["llm_usage_events"] += rest - sum(counts.values())
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET work_mem = '256MB'")
        started = time.monotonic()
        for statement in RUNS_SQL.split(";"):
            if statement.strip():
                conn.execute(fill(statement, runs=runs))
        log(f"loaded {runs} runs with phases and attempts ({time.monotonic() - started:.1f}s)")
        for table, sql in LOAD_SQL.items():
            started = time.monotonic()
            n = hot_rows + counts[table]
            conn.execute(fill(sql, hot=hot_rows, runs=runs, n=n))
            log(f"loaded {n:,} rows into {table} ({time.monotonic() - started:.1f}s)")
        typical = conn.execute("SELECT id FROM bench_runs WHERE idx = %s", (runs // 2,)).fetchone()
        hot = conn.execute("SELECT id FROM bench_runs WHERE idx = 0").fetchone()
        conn.commit()
    # The rows were bulk-loaded around the writers, so compute their hourly rollups as
    # `autopack db rebuild-rollups` would (the API keeps them current on every write).
    started = time.monotonic()
    engine = create_engine(url)
    with Session(engine) as session, session.begin():
        counts_by_table = rollups.rebuild(session)
    engine.dispose()
    log(f"rebuilt rollups {counts_by_table} ({time.monotonic() - started:.1f}s)")
    assert typical is not None and hot is not None
    started = time.monotonic()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")  # so no checkpoint of the load runs during the measurements
    log(f"VACUUM (ANALYZE) and CHECKPOINT ({time.monotonic() - started:.1f}s)")
    return str(typical[0]), str(hot[0])


def scalar(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


# --- the API process ----------------------------------------------------------------------------


@contextmanager
def api_process(url: str, data_dir: Path, pg_options: str | None = None) -> Iterator[str]:
    """The real API (`python -m cli api`) on a free loopback port; stopped on exit.

    pg_options, when given, is passed as PGOPTIONS (server settings of every connection).
    """
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "BROKER_URL": BROKER_URL,
        "AUTOPACK_DATA_DIR": str(data_dir),
        "AUTOPACK_API_HOST": "127.0.0.1",
        "AUTOPACK_LOG_JSON": "true",
        "AUTOPACK_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    if pg_options:
        env["PGOPTIONS"] = pg_options
    log_path = data_dir / "api.log"
    with log_path.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "api", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        for _ in range(300):  # bounded: 300 x 0.1 s
            if process.poll() is not None:
                raise RuntimeError(f"API exited: {log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("API did not answer /healthz within 30 s")
            time.sleep(0.1)
        else:
            raise RuntimeError("API did not answer /healthz")
        log(f"API pid {process.pid} answers on {base}")
        try:
            yield base
        except Exception:
            log(f"API log tail:\n{log_path.read_text(errors='replace')[-3000:]}")
            raise
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log(f"API pid {process.pid} stopped")


# --- measurements -------------------------------------------------------------------------------


def make_cases(typical: str, hot: str, now: datetime) -> list[Case]:
    """Each endpoint for a typical and the hot run; the summary over 24 h, 7 d and 30 d."""

    def phase6(run_id: str) -> Callable[[Session], object]:
        def call(session: Session) -> object:
            repository.get_run(session, run_id)
            return queries.phase6_stats(session, run_id)

        return call

    def efficiency(run_id: str) -> Callable[[Session], object]:
        def call(session: Session) -> object:
            repository.get_run(session, run_id)
            return queries.token_efficiency(session, run_id)

        return call

    def consolidated(run_id: str) -> Callable[[Session], object]:
        def call(session: Session) -> object:
            repository.get_run(session, run_id)
            return (
                queries.tokens_spent(session, run_id=run_id),
                queries.artifact_tokens_avoided(session, run_id=run_id),
                queries.doctor_tokens_avoided(session, run_id=run_id),
            )

        return call

    def summary(since: datetime) -> Callable[[Session], object]:
        def call(session: Session) -> object:
            return queries.summary(session, since, 10)

        return call

    cases: list[Case] = []
    for label, run_id in (("typical run", typical), ("hot run", hot)):
        base = f"/dashboard/runs/{run_id}"
        cases += [
            Case("phase6-stats", label, f"{base}/phase6-stats", {}, phase6(run_id)),
            Case("token-efficiency", label, f"{base}/token-efficiency", {}, efficiency(run_id)),
            Case(
                "consolidated-metrics",
                label,
                f"{base}/consolidated-metrics",
                {},
                consolidated(run_id),
            ),
        ]
    for label, delta in (("since 24h", timedelta(hours=24)), ("since 7d", timedelta(days=7))):
        since = now - delta
        cases.append(
            Case(
                "summary", label, "/dashboard/summary", {"since": since.isoformat()}, summary(since)
            )
        )
    since = now - timedelta(days=30)
    cases.append(
        Case(
            "summary",
            "since 30d",
            "/dashboard/summary",
            {"since": since.isoformat()},
            summary(since),
        )
    )
    return cases


def count_rows(url: str, case: Case, typical: str, hot: str) -> int:
    """Metric rows the case aggregates (phase6 + token efficiency + llm usage in scope)."""
    tables = {
        "phase6-stats": ["phase6_metrics"],
        "token-efficiency": ["token_efficiency_metrics"],
        "consolidated-metrics": ["llm_usage_events", "token_efficiency_metrics", "phase6_metrics"],
        "summary": ["llm_usage_events", "token_efficiency_metrics", "phase6_metrics"],
    }[case.endpoint]
    total = 0
    for table in tables:
        if case.endpoint == "summary":
            total += int(
                scalar(
                    url,
                    f"SELECT count(*) FROM {table} WHERE created_at >= %s",
                    (case.params["since"],),
                )
            )
        else:
            run_id = hot if case.scope == "hot run" else typical
            total += int(scalar(url, f"SELECT count(*) FROM {table} WHERE run_id = %s", (run_id,)))
    return total


def measure_http(base: str, key: str, case: Case, requests: int, budget_s: float) -> None:
    """Sequential requests after a warm-up; stops early when the case's time budget is spent."""
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as client:
        for _ in range(min(10, requests)):
            response = client.get(case.path, params=case.params)
            if response.status_code != 200:
                raise RuntimeError(f"{case.path}: {response.status_code} {response.text[:500]}")
        started = time.monotonic()
        for _ in range(requests):
            t0 = time.perf_counter()
            response = client.get(case.path, params=case.params)
            elapsed = (time.perf_counter() - t0) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{case.path}: {response.status_code} {response.text[:500]}")
            case.http_ms.append(elapsed)
            if time.monotonic() - started > budget_s:
                break


def measure_direct(sessions: sessionmaker[Session], case: Case, reps: int, budget_s: float) -> None:
    """The route's query functions called in-process: DB round-trips plus ORM, no HTTP."""
    with sessions() as session:
        case.call(session)  # warm-up
    started = time.monotonic()
    for _ in range(reps):
        t0 = time.perf_counter()
        with sessions() as session:
            case.call(session)
        case.direct_ms.append((time.perf_counter() - t0) * 1000)
        if time.monotonic() - started > budget_s:
            break


def capture_statements(
    engine: Engine, sessions: sessionmaker[Session], case: Case
) -> list[tuple[str, Any]]:
    """The SQL statements (with parameters) one call of the case's aggregate executes."""
    captured: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with sessions() as session:
            case.call(session)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return [(sql, params) for sql, params in captured if sql.lstrip().upper().startswith("SELECT")]


def explain_case(engine: Engine, sessions: sessionmaker[Session], case: Case) -> list[Statement]:
    """EXPLAIN ANALYZE every statement of the case (median of 3); planning + execution time."""
    results: list[Statement] = []
    for sql, params in capture_statements(engine, sessions, case):
        totals: list[float] = []
        jits: list[float] = []
        with engine.connect() as conn:
            for _ in range(3):
                row = conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params
                ).scalar_one()
                plan = (json.loads(row) if isinstance(row, str) else row)[0]
                totals.append(float(plan["Planning Time"]) + float(plan["Execution Time"]))
                jits.append(float(plan.get("JIT", {}).get("Timing", {}).get("Total", 0.0)))
        results.append(
            Statement(
                case.endpoint + " " + case.scope,
                sql,
                params,
                statistics.median(totals),
                statistics.median(jits),
            )
        )
    case.explained = results
    case.statements = len(results)
    case.sql_ms = sum(s.total_ms for s in results)
    case.jit_ms = sum(s.jit_ms for s in results)
    return results


def explain_text(engine: Engine, statement: Statement) -> str:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, SETTINGS) " + statement.sql, statement.params
        ).all()
    return "\n".join(str(r[0]) for r in rows)


def verdict(p99: float) -> str:
    if p99 <= WELL_UNDER_MS:
        return "well under"
    if p99 < BUDGET_MS:
        return "under, not well"
    return "**OVER**"


def table(cases: list[Case]) -> str:
    lines = [
        "| endpoint | scope | metric rows in scope | n | p50 ms | p95 ms | p99 ms | max ms "
        "| direct call p50 ms | SQL ms (EXPLAIN ANALYZE, statements) | p99 vs 100 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cases:
        p99 = percentile(c.http_ms, 99)
        jit = f", JIT {c.jit_ms:.1f}" if c.jit_ms >= 0.05 else ""
        lines.append(
            f"| {c.endpoint} | {c.scope} | {c.rows:,} | {len(c.http_ms)} "
            f"| {percentile(c.http_ms, 50):.1f} | {percentile(c.http_ms, 95):.1f} "
            f"| {p99:.1f} | {max(c.http_ms):.1f} | {statistics.median(c.direct_ms):.1f} "
            f"| {c.sql_ms:.1f} ({c.statements}{jit}) | {verdict(p99)} |"
        )
    return "\n".join(lines)


def short_sql(sql: str, limit: int = 110) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def breakdown(cases: list[Case]) -> str:
    """Per-statement EXPLAIN ANALYZE times of the cases that are not well under at p99."""
    lines = ["Statements of the cases not well under the budget (EXPLAIN ANALYZE ms):"]
    for case in cases:
        if percentile(case.http_ms, 99) <= WELL_UNDER_MS:
            continue
        lines.append(f"- {case.endpoint} ({case.scope}):")
        for statement in sorted(case.explained, key=lambda s: -s.total_ms):
            lines.append(f"    {statement.total_ms:7.1f}  {short_sql(statement.sql)}")
    return "\n".join(lines)


def machine(url: str) -> str:
    mem_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    version = scalar(url, "SELECT version()")
    settings = {
        name: scalar(url, f"SHOW {name}")
        for name in ("shared_buffers", "work_mem", "max_parallel_workers_per_gather", "jit")
    }
    knobs = ", ".join(f"{k}={v}" for k, v in settings.items())
    return (
        f"nproc={os.cpu_count()}, RAM={mem_kb / 1024 / 1024:.1f} GiB, {version}; {knobs}; "
        f"Python {sys.version.split()[0]}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="metric rows in total")
    parser.add_argument("--runs", type=int, default=2000, help="runs (the hot run included)")
    parser.add_argument("--hot-rows", type=int, default=50_000, help="hot run's rows per table")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per case")
    parser.add_argument("--case-budget", type=float, default=20.0, help="max seconds per case")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--pg-options",
        default=None,
        help="server settings for the API's and the bench's connections (PGOPTIONS), "
        "e.g. '-c plan_cache_mode=force_custom_plan'",
    )
    args = parser.parse_args(argv)
    if args.runs < 10 or args.requests < 1:
        parser.error("--runs must be >= 10 and --requests >= 1")

    started = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="autopack-bench-"))
    try:
        with bench_database(args.keep_db) as url:
            settings = Settings(database_url=url, broker_url=BROKER_URL, data_dir=data_dir)
            upgrade(settings)
            log("migrated to head")
            typical, hot = load(url, args.runs, args.rows, args.hot_rows)
            connect_args = {"options": args.pg_options} if args.pg_options else {}
            engine = make_engine(settings, connect_args=connect_args)
            try:
                sessions = make_session_factory(engine)
                with transaction(sessions) as session:
                    key = auth.create_key(session, "bench")[1]
                now = datetime.now(UTC)
                cases = make_cases(typical, hot, now)
                for case in cases:
                    case.rows = count_rows(url, case, typical, hot)
                load_before = os.getloadavg()
                with api_process(url, data_dir, args.pg_options) as base:
                    for case in cases:
                        measure_http(base, key, case, args.requests, args.case_budget)
                        log(
                            f"HTTP {case.endpoint} ({case.scope}): n={len(case.http_ms)} "
                            f"p50={percentile(case.http_ms, 50):.1f} ms "
                            f"p99={percentile(case.http_ms, 99):.1f} ms"
                        )
                load_after = os.getloadavg()
                statements: list[Statement] = []
                for case in cases:
                    measure_direct(sessions, case, min(args.requests, 30), args.case_budget / 4)
                    statements += explain_case(engine, sessions, case)
                slowest = max(statements, key=lambda s: s.total_ms)
                plan = explain_text(engine, slowest)
                info = machine(url)
                total_rows = sum(
                    int(scalar(url, f"SELECT count(*) FROM {t}")) for t in TABLE_SHARES
                )
            finally:
                engine.dispose()
            print()
            print(f"Machine: {info}")
            print(f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
            print(
                f"Load average (1 min) before/after the HTTP measurements: "
                f"{load_before[0]:.2f}/{load_after[0]:.2f}; PGOPTIONS: {args.pg_options or 'none'}"
            )
            print(
                f"Data: {total_rows:,} metric rows, {args.runs} runs; "
                f"typical run {typical}, hot run {hot}"
            )
            print()
            print(table(cases))
            print()
            print(breakdown(cases))
            print()
            print(f"Slowest statement ({slowest.case}, {slowest.total_ms:.1f} ms):")
            print(slowest.sql)
            print(f"parameters: {slowest.params}")
            print()
            print(plan)
            print()
            print(f"Total bench time: {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
