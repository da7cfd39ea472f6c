"""Runs that carry a plan: normalized in the worktree by the worker, refused when too vague."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.models import Phase6Metric, Run
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from workers import phases as phase_kinds
from workers.executor import RunExecutor
from workers.phases import AttemptContext, PhaseResult
from workers.workspace import Workspaces

PROJECT = {
    "pyproject.toml": '[project]\nname = "calc"\nversion = "0.1"\n',
    "calc.py": "def add(a, b):\n    return a + b\n",
    "tests/__init__.py": "",
    "tests/test_calc.py": "import unittest\nfrom calc import add\n\nclass T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 2), 4)\n",
}


@pytest.fixture
def run_plan(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> Callable[..., Run]:
    def execute(plan: str, **extra: Any) -> Run:
        origin = make_repo(PROJECT, name=f"o-{uuid.uuid4().hex[:6]}")
        name = f"plan-{uuid.uuid4().hex[:8]}"
        with transaction(sessions) as session:
            repos.add(session, name, str(origin))
            run_id = service.submit(
                session,
                settings,
                RunCreate.model_validate(
                    {"repo": name, "goal": "check the calculator", "plan": plan, **extra}
                ),
            ).run.id
        RunExecutor(settings, sessions, "w").execute(run_id)
        with sessions() as session:
            return repository.get_run_detail(session, run_id)

    return execute


def plan_metric(sessions: sessionmaker[Session], run_id: str) -> Phase6Metric:
    with sessions() as session:
        return session.scalars(
            select(Phase6Metric).where(
                Phase6Metric.run_id == run_id, Phase6Metric.plan_normalization_used.is_(True)
            )
        ).one()


def test_plan_is_normalized_into_phases_that_run(
    run_plan: Callable[..., Run], sessions: sessionmaker[Session]
) -> None:
    run = run_plan(
        "1. Note the check in `NOTES.md`: `echo checked > NOTES.md`\n2. Run the tests: `python3 -m unittest discover -s tests -t .`\n3. Run the tests"
    )
    assert run.status == "succeeded", run.failure_reason
    assert [(p.kind, p.status) for p in run.phases] == [
        ("shell", "succeeded"),
        ("shell", "succeeded"),
        ("validate", "succeeded"),
    ]
    assert run.phases[0].spec["scope"] == ["NOTES.md"]
    assert run.phases[2].attempts[0].commands  # validate inferred the project's test command
    metric = plan_metric(sessions, run.id)
    assert (
        metric.plan_normalization_confidence is not None
        and metric.plan_normalization_confidence >= 0.9
    )
    assert metric.phase_outcome == "normalized" and (metric.plan_scope_size_bytes or 0) >= 0


def test_vague_plan_fails_before_executing_anything(
    run_plan: Callable[..., Run], sessions: sessionmaker[Session]
) -> None:
    run = run_plan("- think about the architecture\n- make it better somehow")
    assert run.status == "failed" and run.phases == []
    assert "plan refused" in (run.failure_reason or "")
    assert plan_metric(sessions, run.id).phase_outcome == "refused"


def test_forced_plan_runs_what_it_understood(run_plan: Callable[..., Run]) -> None:
    run = run_plan(
        "- think about the architecture\n- then `echo done > done.txt`", plan_policy="force"
    )
    assert run.status == "succeeded" and [p.kind for p in run.phases] == ["shell"]


class ExplodingRunner:
    """A phase runner with a bug."""

    def commands(self, spec: Mapping[str, Any], worktree: Path) -> list[str]:
        return ["x"]

    def run(self, spec: Mapping[str, Any], ctx: AttemptContext) -> PhaseResult:
        raise RuntimeError("bug in a runner")


def test_internal_error_ends_run_failed_instead_of_running_forever(
    sessions: sessionmaker[Session],
    settings: Settings,
    make_repo: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    origin = make_repo(PROJECT, name="o-bug")
    with transaction(sessions) as session:
        repos.add(session, "plan-bug", str(origin))
        run_id = service.submit(
            session,
            settings,
            RunCreate.model_validate(
                {"repo": "plan-bug", "goal": "g", "phases": [{"id": "a", "run": "true"}]}
            ),
        ).run.id
    monkeypatch.setitem(phase_kinds.RUNNERS, "shell", ExplodingRunner())
    assert RunExecutor(settings, sessions, "w").execute(run_id) == "failed"
    with sessions() as session:
        run = repository.get_run(session, run_id)
        assert run.status == "failed" and "internal error: RuntimeError: bug in a runner" in (
            run.failure_reason or ""
        )
        assert run.lease_owner is None


def test_internal_error_after_a_succeeded_command_leaves_nothing_running(
    sessions: sessionmaker[Session],
    settings: Settings,
    make_repo: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attempt's success is written with its phase; a failure in between must not leave it running."""
    origin = make_repo(PROJECT, name="o-ckpt")
    with transaction(sessions) as session:
        repos.add(session, "ckpt-bug", str(origin))
        run_id = service.submit(
            session,
            settings,
            RunCreate.model_validate(
                {"repo": "ckpt-bug", "goal": "g", "phases": [{"id": "a", "run": "touch made"}]}
            ),
        ).run.id

    def broken_checkpoint(*args: object, **kwargs: object) -> str:
        raise RuntimeError("disk full while committing")

    monkeypatch.setattr(Workspaces, "commit_checkpoint", broken_checkpoint)
    assert RunExecutor(settings, sessions, "w").execute(run_id) == "failed"
    with sessions() as session:
        run = repository.get_run_detail(session, run_id)
        assert run.status == "failed"
        assert [p.status for p in run.phases] == ["failed"]
        attempts = run.phases[0].attempts
        assert [a.status for a in attempts] == ["failed"]
        assert "before this attempt was recorded" in (attempts[0].failure_reason or "")
