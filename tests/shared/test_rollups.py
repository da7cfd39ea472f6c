"""Hourly rollups: the summary read from them equals the summary over the raw rows, on both databases."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session

from shared import repos
from shared.db import make_engine, make_session_factory
from shared.metrics import queries, rollups
from shared.metrics.prometheus import AutopackCollector
from shared.metrics.recording import (
    mark_mitigation_outcome,
    record_llm_usage,
    record_phase6,
    record_token_efficiency,
)
from shared.metrics.schemas import DashboardSummary
from shared.migrations import downgrade, upgrade
from shared.models import LlmUsageEvent, Phase6Metric, utcnow
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import PG_ADMIN

PATTERNS = ["python_missing_dep", "scope_mismatch", "transient_network", None]
SOURCES = ["run_local", "global", "fallback", None]


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """A migrated database of this test's own (metrics of other tests would not disturb, but this is exact)."""
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path, database_url=None)
        upgrade(settings)
        yield settings
        return
    name = f"autopack_rollup_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    settings = Settings(
        data_dir=tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    )
    upgrade(settings)
    yield settings
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def session(fresh: Settings, tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(fresh)
    with make_session_factory(engine)() as session:
        repos.add(session, "r", str(tmp_path))
        session.commit()
        yield session
    engine.dispose()


def _run(session: Session, settings: Settings) -> str:
    spec = RunCreate.model_validate(
        {"repo": "r", "goal": "g", "phases": [{"id": "a", "run": "true"}]}
    )
    return service.submit(session, settings, spec).run.id


def _populate(session: Session, settings: Settings, now: datetime, rng: random.Random) -> None:
    """Rows spread over 30 hours, some exactly on hour boundaries, some mitigations settled later."""
    run_ids = [_run(session, settings) for _ in range(3)]
    for i in range(240):
        at = now - timedelta(minutes=rng.randrange(0, 30 * 60))
        if i % 17 == 0:
            at = rollups.hour_of(at)  # on the boundary itself
        run_id = rng.choice(run_ids)
        doctor = rng.random() < 0.4
        record_llm_usage(
            session,
            run_id=run_id,
            provider="openai",
            model=rng.choice(["m1", "m2"]),
            role="doctor" if doctor else "builder",
            prompt_tokens=rng.randrange(1000),
            completion_tokens=rng.randrange(300),
            total_tokens=rng.randrange(1300),
            is_doctor_call=doctor,
            action=rng.choice(["retry", "give_up", None]) if doctor else None,
            cost_usd=rng.choice([None, round(rng.random() / 100, 6)]),
            created_at=at,
        )
        record_token_efficiency(
            session,
            run_id=run_id,
            role="doctor",
            context_budget_tokens=3000,
            context_used_tokens=rng.randrange(3000),
            artifact_substitutions=rng.randrange(3),
            tokens_saved_artifacts=rng.randrange(900),
            created_at=at,
        )
        pattern = rng.choice(PATTERNS)
        row = record_phase6(
            session,
            run_id=run_id,
            phase_id="a",
            attempt=1,
            failure_hardening_triggered=pattern is not None,
            failure_pattern_detected=pattern,
            doctor_call_skipped=rng.random() < 0.5,
            doctor_tokens_avoided_estimate=rng.choice([None, rng.randrange(20_000)]),
            estimate_coverage_n=rng.choice([None, rng.randrange(100)]),
            estimate_source=rng.choice(SOURCES),
            created_at=at,
        )
        if pattern is not None and rng.random() < 0.7:
            mark_mitigation_outcome(session, row.id, rng.random() < 0.6)
    session.commit()


def _raw_summary(session: Session, since: datetime) -> dict[str, Any]:
    """The categories computed straight from the raw rows (the reference)."""
    m = Phase6Metric
    patterns = session.execute(
        select(
            m.failure_pattern_detected,
            func.count(),
            func.sum(case((m.mitigation_fixed.is_(True), 1), else_=0)),
        )
        .where(m.created_at >= since, m.failure_pattern_detected.is_not(None))
        .group_by(m.failure_pattern_detected)
    ).all()
    fixed, decided = session.execute(
        select(
            func.count().filter(m.mitigation_fixed.is_(True)),
            func.count().filter(m.mitigation_fixed.is_not(None)),
        ).where(m.created_at >= since)
    ).one()
    return {
        "tokens": queries.tokens_spent(session, since=since).model_dump(),
        "artifacts": queries.artifact_tokens_avoided(session, since=since).model_dump(),
        "doctor": queries.doctor_tokens_avoided(session, since=since).model_dump(),
        "patterns": {str(p): (int(c), int(f or 0)) for p, c, f in patterns},
        "rate": round(fixed / decided, 4) if decided else None,
    }


def _view(summary: DashboardSummary) -> dict[str, Any]:
    tokens = summary.tokens_spent.model_dump()
    return {
        "tokens": tokens,
        "artifacts": summary.artifact_tokens_avoided.model_dump(),
        "doctor": summary.doctor_tokens_avoided.model_dump(),
        "patterns": {p.pattern_id: (p.triggered, p.fixed) for p in summary.top_failure_patterns},
        "rate": summary.mitigation_success_rate,
    }


def _close(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal, with float sums of cost compared to the rounding the API applies."""
    ca, cb = a["tokens"].pop("cost_usd"), b["tokens"].pop("cost_usd")
    same_cost = (ca is None and cb is None) or (
        ca is not None and cb is not None and abs(ca - cb) < 1e-6
    )
    return same_cost and a == b


def test_summary_from_rollups_equals_raw_rows_for_any_window(
    session: Session, fresh: Settings
) -> None:
    rng = random.Random(7)
    now = utcnow()
    _populate(session, fresh, now, rng)
    windows = [now - timedelta(hours=h) for h in (0.5, 1, 2, 5, 24, 31)]
    windows += [rollups.hour_of(now) - timedelta(hours=3)]  # exactly on a boundary
    windows += [now - timedelta(minutes=rng.randrange(1, 31 * 60)) for _ in range(8)]
    for since in windows:
        raw = _raw_summary(session, since)
        assert raw["tokens"]["llm_calls"] > 0 or since > now - timedelta(hours=1)
        assert _close(_view(queries.summary(session, since, top=10)), raw), since


def test_rollups_hold_the_window_numbers_not_the_raw_rows(
    session: Session, fresh: Settings
) -> None:
    """The summary really reads the rollups for whole hours: emptying them changes the answer."""
    _populate(session, fresh, utcnow(), random.Random(11))
    since = utcnow() - timedelta(hours=20)
    before = queries.summary(session, since)
    rollups.clear(session)
    emptied = queries.summary(session, since)
    assert emptied.tokens_spent.llm_calls < before.tokens_spent.llm_calls
    counts = rollups.rebuild(session)
    session.commit()
    assert all(counts.values())
    assert queries.summary(session, since) == before


def test_incremental_rollups_equal_a_rebuild(session: Session, fresh: Settings) -> None:
    _populate(session, fresh, utcnow(), random.Random(3))

    def snapshot() -> dict[str, list[tuple[Any, ...]]]:
        out = {}
        for model in rollups.ROLLUP_MODELS:
            rows = session.execute(select(model.__table__)).all()
            out[model.__tablename__] = sorted(
                tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows
            )
        return out

    incremental = snapshot()
    assert all(incremental.values())
    rollups.rebuild(session)
    session.commit()
    assert snapshot() == incremental


def test_migration_backfills_rollups_from_existing_rows(fresh: Settings, tmp_path: Path) -> None:
    engine = make_engine(fresh)
    with make_session_factory(engine)() as session:
        repos.add(session, "r", str(tmp_path))
        _populate(session, fresh, utcnow(), random.Random(5))
        since = utcnow() - timedelta(hours=31)
        expected = queries.summary(session, since)
        assert expected.tokens_spent.llm_calls == 240
    downgrade(fresh, "0008")
    upgrade(fresh)
    with make_session_factory(engine)() as session:
        assert session.scalar(text("SELECT count(*) FROM llm_usage_hourly"))
        assert queries.summary(session, since) == expected
    engine.dispose()


def test_prometheus_counters_from_rollups_equal_raw_counts(
    session: Session, fresh: Settings
) -> None:
    _populate(session, fresh, utcnow(), random.Random(13))
    engine = session.get_bind()
    collector = AutopackCollector(make_session_factory(engine), fresh, lambda queues: {})  # type: ignore[arg-type]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in collector.collect():
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    m, e = Phase6Metric, LlmUsageEvent
    outcome = case(
        (m.mitigation_fixed.is_(True), "fixed"),
        (m.mitigation_fixed.is_(False), "not_fixed"),
        else_="pending",
    )
    mitigations = {
        (str(p), str(o)): int(c)
        for p, o, c in session.execute(
            select(m.failure_pattern_detected, outcome, func.count())
            .where(m.failure_pattern_detected.is_not(None))
            .group_by(m.failure_pattern_detected, outcome)
        )
    }
    assert mitigations and all(
        samples[("autopack_mitigations_total", (("outcome", o), ("pattern", p)))] == c
        for (p, o), c in mitigations.items()
    )
    exposed = sum(v for (name, _), v in samples.items() if name == "autopack_mitigations_total")
    assert exposed == sum(mitigations.values())
    for role, model, total in session.execute(
        select(e.role, e.model, func.sum(e.total_tokens)).group_by(e.role, e.model)
    ):
        assert samples[("autopack_llm_tokens_total", (("model", model), ("role", role)))] == total
    for action, count in session.execute(
        select(e.action, func.count()).where(e.is_doctor_call.is_(True)).group_by(e.action)
    ):
        assert samples[("autopack_doctor_calls_total", (("action", action or "none"),))] == count
