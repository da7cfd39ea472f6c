"""Goal drift measured on what phases really changed, in the real executor."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.models import Run
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from workers.executor import RunExecutor

GOAL = "Document the new retry budget in the changelog and the configuration guide"
INTENTION = {
    "outcomes": [
        "the changelog describes the retry budget",
        "the configuration guide lists AUTOPACK_RETRY_BUDGET",
    ]
}
ON_GOAL = "echo '- Added a retry budget (AUTOPACK_RETRY_BUDGET) for phase retries' >> CHANGELOG.md && echo 'AUTOPACK_RETRY_BUDGET: how many retries a run may spend' >> docs/configuration.md"
OFF_GOAL = (
    "echo 'Buy our premium plan with animated logo' > marketing.html && echo 'pricing' > banner.txt"
)


@pytest.fixture
def run_with(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> Callable[..., Run]:
    def execute(phases: list[dict[str, Any]], drift: dict[str, Any]) -> Run:
        origin = make_repo(
            {"CHANGELOG.md": "# Changelog\n", "docs/configuration.md": "# Configuration\n"},
            name=f"o-{uuid.uuid4().hex[:6]}",
        )
        name = f"drift-{uuid.uuid4().hex[:8]}"
        spec = RunCreate.model_validate(
            {"repo": name, "goal": GOAL, "intention": INTENTION, "phases": phases, "drift": drift}
        )
        with transaction(sessions) as session:
            repos.add(session, name, str(origin))
            run_id = service.submit(session, settings, spec).run.id
        RunExecutor(settings, sessions, "w").execute(run_id)
        with sessions() as session:
            return repository.get_run_detail(session, run_id)

    return execute


def test_advisory_drift_records_scores_on_and_off_goal(run_with: Callable[..., Run]) -> None:
    run = run_with(
        [
            {"id": "docs", "run": ON_GOAL},
            {"id": "marketing", "run": OFF_GOAL},
            {"id": "noop", "run": "true"},
        ],
        {"mode": "advisory", "threshold": 0.1},
    )
    assert run.status == "succeeded"
    docs, marketing, noop = run.phases
    assert docs.drift_score is not None and marketing.drift_score is not None
    assert docs.drift_score > 0.1 > marketing.drift_score
    assert (docs.drift_flagged, marketing.drift_flagged) == (False, True)
    assert noop.drift_score is None  # no files changed, nothing to score


def test_blocking_drift_fails_off_goal_phase(run_with: Callable[..., Run]) -> None:
    run = run_with(
        [
            {"id": "docs", "run": ON_GOAL},
            {"id": "marketing", "run": OFF_GOAL},
            {"id": "after", "run": "true"},
        ],
        {"mode": "blocking", "threshold": 0.1},
    )
    assert run.status == "failed"
    assert [p.status for p in run.phases] == ["succeeded", "failed", "skipped"]
    assert "goal drift" in (run.phases[1].failure_reason or "")


def test_drift_off_records_nothing(run_with: Callable[..., Run]) -> None:
    run = run_with([{"id": "marketing", "run": OFF_GOAL}], {"mode": "off"})
    assert run.status == "succeeded" and run.phases[0].drift_score is None


def test_run_view_reports_intention_context_size(run_with: Callable[..., Run]) -> None:
    run = run_with([{"id": "noop", "run": "true"}], {"mode": "off"})
    read = service.run_read(run)
    assert read.intention_context_chars is not None and 0 < read.intention_context_chars <= 2048
