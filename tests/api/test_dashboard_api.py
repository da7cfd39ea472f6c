"""Dashboard endpoints through the real API process."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.metrics.recording import record_llm_usage, record_phase6

pytestmark = pytest.mark.e2e


def test_dashboard_endpoints_answer_typed_json(
    client: httpx.Client, register_repo: Callable[..., str], sessions: sessionmaker[Session]
) -> None:
    run_id = client.post(
        "/runs",
        json={
            "repo": register_repo(),
            "goal": "g",
            "start": False,
            "phases": [{"id": "a", "run": "true"}],
        },
    ).json()["id"]
    with transaction(sessions) as session:
        record_llm_usage(
            session,
            run_id=run_id,
            provider="openai",
            model="m",
            role="doctor",
            prompt_tokens=10,
            completion_tokens=5,
            total_tokens=15,
            is_doctor_call=True,
        )
        record_phase6(
            session,
            run_id=run_id,
            phase_id="a",
            failure_hardening_triggered=True,
            failure_pattern_detected="scope_mismatch",
            doctor_call_skipped=True,
            doctor_tokens_avoided_estimate=10_000,
            estimate_coverage_n=0,
            estimate_source="fallback",
        )
    consolidated = client.get(f"/dashboard/runs/{run_id}/consolidated-metrics").json()
    assert consolidated["tokens_spent"]["total_tokens"] == 15
    assert consolidated["doctor_tokens_avoided"]["estimate_total"] == 10_000
    assert consolidated["ab_delta"] == {
        "experiment_id": None,
        "pair_id": None,
        "tokens_saved": None,
    }
    assert client.get(f"/dashboard/runs/{run_id}/phase6-stats").json()["patterns_detected"] == {
        "scope_mismatch": 1
    }
    assert client.get(f"/dashboard/runs/{run_id}/token-efficiency").json()["contexts"] == 0
    summary = client.get("/dashboard/summary", params={"since": "2000-01-01T00:00:00Z"}).json()
    assert summary["tokens_spent"]["total_tokens"] >= 15
    assert client.get("/dashboard/runs/nope/phase6-stats").status_code == 404
    assert client.get("/dashboard/summary", params={"since": "yesterday"}).status_code == 422


def test_dashboard_needs_a_key(api_url: str) -> None:
    assert httpx.get(f"{api_url}/dashboard/summary").status_code == 401
