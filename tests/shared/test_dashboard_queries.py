"""Dashboard aggregates on real PostgreSQL: every number, and categories that never move each other."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from shared import repos
from shared.metrics import queries
from shared.metrics.recording import record_llm_usage, record_phase6, record_token_efficiency
from shared.models import utcnow
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings


@pytest.fixture
def run_id(db: Session, settings: Settings, tmp_path: Path) -> str:
    repos.add(db, "dash-demo", str(tmp_path))
    spec = RunCreate.model_validate(
        {
            "repo": "dash-demo",
            "goal": "g",
            "phases": [
                {"id": "a", "run": "true"},
                {"id": "b", "run": "true"},
                {"id": "c", "run": "true"},
            ],
        }
    )
    run = service.submit(db, settings, spec).run.id
    # Category 1: three LLM calls, two of them the Doctor's.
    record_llm_usage(
        db,
        run_id=run,
        provider="openai",
        model="m",
        role="doctor",
        prompt_tokens=900,
        completion_tokens=100,
        total_tokens=1000,
        is_doctor_call=True,
        doctor_model_tier="cheap",
        cost_usd=0.01,
    )
    record_llm_usage(
        db,
        run_id=run,
        provider="openai",
        model="m",
        role="doctor",
        prompt_tokens=1800,
        completion_tokens=200,
        total_tokens=2000,
        is_doctor_call=True,
        doctor_model_tier="strong",
        cost_usd=0.02,
    )
    record_llm_usage(
        db,
        run_id=run,
        provider="openai",
        model="m",
        role="builder",
        prompt_tokens=400,
        completion_tokens=100,
        total_tokens=500,
        is_doctor_call=False,
    )
    # Category 2: two budgeted contexts.
    record_token_efficiency(
        db,
        run_id=run,
        phase_id="a",
        role="doctor",
        context_budget_tokens=3000,
        context_used_tokens=2500,
        files_kept=2,
        files_omitted=1,
        artifact_substitutions=1,
        tokens_saved_artifacts=700,
    )
    record_token_efficiency(
        db,
        run_id=run,
        phase_id="b",
        role="doctor",
        context_budget_tokens=3000,
        context_used_tokens=1000,
        artifact_substitutions=0,
        tokens_saved_artifacts=0,
    )
    # Category 3 and Phase6: two skipped Doctor calls (fallback and global), one Doctor call, one plain failure.
    record_phase6(
        db,
        run_id=run,
        phase_id="a",
        attempt=1,
        failure_hardening_triggered=True,
        failure_pattern_detected="python_missing_dep",
        failure_hardening_mitigated=True,
        mitigation_fixed=True,
        doctor_call_skipped=True,
        doctor_tokens_avoided_estimate=10_000,
        estimate_coverage_n=0,
        estimate_source="fallback",
    )
    record_phase6(
        db,
        run_id=run,
        phase_id="b",
        attempt=1,
        failure_hardening_triggered=True,
        failure_pattern_detected="scope_mismatch",
        failure_hardening_mitigated=True,
        mitigation_fixed=False,
        doctor_call_skipped=True,
        doctor_tokens_avoided_estimate=1500,
        estimate_coverage_n=40,
        estimate_source="global",
    )
    record_phase6(
        db,
        run_id=run,
        phase_id="c",
        attempt=1,
        doctor_called=True,
        doctor_action="retry",
        intention_context_injected=True,
        intention_context_chars=600,
    )
    record_phase6(
        db,
        run_id=run,
        phase_id="c",
        attempt=2,
        intention_context_injected=True,
        intention_context_chars=400,
    )
    return run


def test_phase6_stats_counts_every_field(db: Session, run_id: str) -> None:
    stats = queries.phase6_stats(db, run_id)
    assert stats.total_phases == 3
    assert stats.failure_hardening_triggered_count == 2
    assert stats.patterns_detected == {"python_missing_dep": 1, "scope_mismatch": 1}
    assert (
        stats.mitigations_fixed == 1
        and stats.doctor_calls_made == 1
        and stats.doctor_calls_skipped == 2
    )
    assert stats.total_doctor_tokens_avoided_estimate == 11_500
    assert {k: (v.count, v.total_n) for k, v in stats.estimate_coverage_stats.items()} == {
        "fallback": (1, 0),
        "global": (1, 40),
    }
    assert (
        stats.intention_context_injected_count,
        stats.intention_context_total_chars,
        stats.intention_context_avg_chars,
    ) == (2, 1000, 500.0)
    assert stats.plan_normalization_used is False


def test_token_efficiency_sums_contexts(db: Session, run_id: str) -> None:
    view = queries.token_efficiency(db, run_id)
    assert (view.contexts, view.context_budget_tokens, view.context_used_tokens) == (2, 6000, 3500)
    assert (
        view.files_kept,
        view.files_omitted,
        view.artifact_substitutions,
        view.tokens_saved_artifacts,
    ) == (2, 1, 1, 700)


def consolidated(db: Session, run_id: str) -> tuple[object, object, object]:
    return (
        queries.tokens_spent(db, run_id=run_id).model_dump(),
        queries.artifact_tokens_avoided(db, run_id=run_id).model_dump(),
        queries.doctor_tokens_avoided(db, run_id=run_id).model_dump(),
    )


def test_consolidated_categories_hold_known_numbers(db: Session, run_id: str) -> None:
    spent, artifacts, doctor = consolidated(db, run_id)
    assert spent == {
        "total_tokens": 3500,
        "prompt_tokens": 3100,
        "completion_tokens": 400,
        "doctor_tokens": 3000,
        "llm_calls": 3,
        "doctor_calls": 2,
        "cost_usd": 0.03,
    }
    assert artifacts == {"tokens_saved": 700, "substitutions": 1}
    assert doctor == {
        "estimate_total": 11_500,
        "calls_skipped": 2,
        "coverage": {"fallback": {"count": 1, "total_n": 0}, "global": {"count": 1, "total_n": 40}},
    }


def test_adding_rows_to_one_category_never_moves_another(db: Session, run_id: str) -> None:
    spent, artifacts, doctor = consolidated(db, run_id)
    record_llm_usage(
        db,
        run_id=run_id,
        provider="x",
        model="m",
        role="doctor",
        total_tokens=99_999,
        is_doctor_call=True,
    )
    after = consolidated(db, run_id)
    assert after[0] != spent and after[1:] == (artifacts, doctor)
    spent = after[0]
    record_token_efficiency(
        db,
        run_id=run_id,
        role="doctor",
        context_budget_tokens=1,
        context_used_tokens=1,
        artifact_substitutions=3,
        tokens_saved_artifacts=5000,
    )
    after = consolidated(db, run_id)
    assert after[1] != artifacts and (after[0], after[2]) == (spent, doctor)
    artifacts = after[1]
    record_phase6(
        db,
        run_id=run_id,
        phase_id="a",
        doctor_call_skipped=True,
        doctor_tokens_avoided_estimate=777,
        estimate_coverage_n=5,
        estimate_source="run_local",
    )
    after = consolidated(db, run_id)
    assert after[2] != doctor and after[:2] == (spent, artifacts)
    # Phase6 rows without a skipped Doctor call are not category 3.
    record_phase6(db, run_id=run_id, phase_id="b", doctor_tokens_avoided_estimate=1_000_000)
    assert consolidated(db, run_id)[2] == after[2]


def test_summary_windows_runs_patterns_and_success_rate(db: Session, run_id: str) -> None:
    view = queries.summary(db, utcnow() - timedelta(minutes=5))
    assert view.runs.get("queued", 0) >= 1 and view.phases >= 3
    patterns = {p.pattern_id: (p.triggered, p.fixed) for p in view.top_failure_patterns}
    assert patterns["python_missing_dep"][0] >= 1 and patterns["scope_mismatch"][0] >= 1
    assert view.mitigation_success_rate is not None and 0 < view.mitigation_success_rate < 1
    future = queries.summary(db, utcnow() + timedelta(hours=1))
    assert (
        future.runs == {}
        and future.tokens_spent.total_tokens == 0
        and future.mitigation_success_rate is None
    )
