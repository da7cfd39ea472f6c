"""The Doctor-tokens-avoided estimate from real llm_usage_events rows: all three sources."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from shared import repos
from shared.metrics.estimate import estimate_doctor_tokens_avoided
from shared.metrics.recording import record_llm_usage
from shared.models import LlmUsageEvent, utcnow
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings


@pytest.fixture
def two_runs(db: Session, settings: Settings, tmp_path: Path) -> tuple[str, str]:
    db.query(
        LlmUsageEvent
    ).delete()  # rolled back after the test: other sessions' rows are not ours
    repos.add(db, "est-demo", str(tmp_path))
    spec = RunCreate.model_validate(
        {"repo": "est-demo", "goal": "g", "phases": [{"id": "a", "run": "true"}]}
    )
    return service.submit(db, settings, spec).run.id, service.submit(db, settings, spec).run.id


def doctor_call(db: Session, run_id: str, tokens: int, tier: str = "cheap", age_s: int = 0) -> None:
    record_llm_usage(
        db,
        run_id=run_id,
        provider="openai",
        model="m",
        role="doctor",
        total_tokens=tokens,
        is_doctor_call=True,
        doctor_model_tier=tier,
        created_at=utcnow() - timedelta(seconds=age_s),
    )


def test_estimate_without_any_doctor_call_is_conservative_fallback(
    db: Session, two_runs: tuple[str, str]
) -> None:
    run_id, _ = two_runs
    estimate = estimate_doctor_tokens_avoided(db, run_id, "cheap")
    assert (estimate.tokens, estimate.coverage_n, estimate.source) == (10_000, 0, "fallback")
    assert estimate_doctor_tokens_avoided(db, run_id, "strong").tokens == 15_000
    assert estimate_doctor_tokens_avoided(db, run_id, None).tokens == 12_000


def test_estimate_with_few_local_calls_uses_global_median(
    db: Session, two_runs: tuple[str, str]
) -> None:
    run_id, other = two_runs
    for tokens in (1000, 3000, 9000):
        doctor_call(db, other, tokens)
    doctor_call(db, run_id, 5000)
    estimate = estimate_doctor_tokens_avoided(db, run_id, "cheap")
    assert (estimate.tokens, estimate.coverage_n, estimate.source) == (4000, 4, "global")


def test_estimate_global_window_is_last_100_calls(db: Session, two_runs: tuple[str, str]) -> None:
    run_id, other = two_runs
    for i in range(100):
        doctor_call(db, other, 2000, age_s=i)
    for i in range(50):
        doctor_call(db, other, 90_000, age_s=1000 + i)  # older than the window
    estimate = estimate_doctor_tokens_avoided(db, run_id, "cheap")
    assert (estimate.tokens, estimate.coverage_n, estimate.source) == (2000, 100, "global")


def test_estimate_with_three_local_calls_of_tier_uses_run_median(
    db: Session, two_runs: tuple[str, str]
) -> None:
    run_id, other = two_runs
    for tokens in (100, 200, 700):
        doctor_call(db, run_id, tokens)
    doctor_call(db, run_id, 50_000, tier="strong")
    doctor_call(db, other, 1_000_000)
    estimate = estimate_doctor_tokens_avoided(db, run_id, "cheap")
    assert (estimate.tokens, estimate.coverage_n, estimate.source) == (200, 3, "run_local")
