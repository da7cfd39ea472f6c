"""Failure hardening and the Doctor inside the real executor: mitigations fix retries, metrics tell so."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.models import ErrorLog, LlmUsageEvent, Phase6Metric, Run, TokenEfficiencyMetric
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.wheels import build_wheel
from workers.executor import RunExecutor
from workers.hardening.base import FailureContext, MitigationResult
from workers.hardening.registry import PatternRegistry

Submit = Callable[..., str]


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer("openai") as server:
        yield server


@pytest.fixture
def doctor_settings(settings: Settings, fake_llm: FakeLLMServer) -> Settings:
    return settings.model_copy(
        update={
            "llm_provider": "openai",
            "llm_base_url": fake_llm.base_url,
            "llm_api_key": SecretStr("sk-test-secret"),
            "doctor_model_cheap": "doc-cheap",
        }
    )


@pytest.fixture
def submit_to(
    sessions: sessionmaker[Session], make_repo: Callable[..., Path]
) -> Callable[..., Submit]:
    """Register a repository with the given files; returns a function submitting runs against it."""

    def register(files: dict[str, str]) -> Submit:
        origin = make_repo(files, name=f"origin-{uuid.uuid4().hex[:6]}")
        name = f"rec-{uuid.uuid4().hex[:8]}"
        with transaction(sessions) as session:
            repos.add(session, name, str(origin))

        def submit(settings: Settings, phases: list[dict[str, Any]], **extra: Any) -> str:
            spec = RunCreate.model_validate(
                {"repo": name, "goal": "make the checks pass", "phases": phases, **extra}
            )
            with transaction(sessions) as session:
                return service.submit(session, settings, spec).run.id

        return submit

    return register


def rows(sessions: sessionmaker[Session], model: Any, run_id: str) -> list[Any]:
    with sessions() as session:
        return list(session.scalars(select(model).where(model.run_id == run_id).order_by(model.id)))


def detail(sessions: sessionmaker[Session], run_id: str) -> Run:
    with sessions() as session:
        return repository.get_run_detail(session, run_id)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheels"), "tinydep", "1.0", "VALUE = 42\n")


def test_missing_declared_dependency_is_installed_and_retry_passes_without_llm(
    sessions: sessionmaker[Session],
    doctor_settings: Settings,
    submit_to: Callable[..., Submit],
    wheelhouse: Path,
    fake_llm: FakeLLMServer,
) -> None:
    submit = submit_to(
        {
            "requirements.txt": f"{wheelhouse}\n",
            "check.py": "import tinydep\nprint('value', tinydep.VALUE)\n",
        }
    )
    run_id = submit(
        doctor_settings,
        [
            {"id": "venv", "run": f"{sys.executable} -m venv .venv", "timeout_s": 300},
            {
                "id": "check",
                "run": ".venv/bin/python check.py",
                "max_attempts": 2,
                "timeout_s": 300,
            },
        ],
    )
    assert RunExecutor(doctor_settings, sessions, "w").execute(run_id) == "succeeded"
    run = detail(sessions, run_id)
    attempts = run.phases[1].attempts
    assert [(a.status, a.mitigation) for a in attempts] == [
        ("failed", "python_missing_dep"),
        ("succeeded", None),
    ]
    assert attempts[0].failure_class == "dependency"
    assert "value 42" in (attempts[1].output_tail or "")
    [metric] = rows(sessions, Phase6Metric, run_id)
    assert (
        metric.failure_hardening_triggered
        and metric.failure_pattern_detected == "python_missing_dep"
    )
    assert metric.failure_hardening_mitigated and metric.mitigation_fixed is True
    assert metric.doctor_call_skipped and not metric.doctor_called
    assert (
        metric.estimate_source in {"fallback", "global"}
        and (metric.doctor_tokens_avoided_estimate or 0) > 0
    )
    [error] = rows(sessions, ErrorLog, run_id)
    assert (
        error.hardening_caught
        and error.pattern_id == "python_missing_dep"
        and error.failure_class == "dependency"
    )
    assert rows(sessions, LlmUsageEvent, run_id) == [] and fake_llm.requests == []


def test_unmatched_failure_goes_to_doctor_whose_command_fixes_it(
    sessions: sessionmaker[Session],
    doctor_settings: Settings,
    submit_to: Callable[..., Submit],
    fake_llm: FakeLLMServer,
) -> None:
    submit = submit_to({"VERSION": "1.0\n"})
    fake_llm.enqueue(
        '{"action": "retry_with_command", "command": "echo 2.0 > VERSION && grep -qx 2.0 VERSION", "reason": "VERSION must say 2.0"}',
        prompt_tokens=812,
        completion_tokens=41,
    )
    run_id = submit(
        doctor_settings,
        [
            {
                "id": "version",
                "run": "grep -qx 2.0 VERSION || { echo 'release check: VERSION is not 2.0' >&2; exit 1; }",
                "max_attempts": 2,
            }
        ],
        intention={"outcomes": ["VERSION reads 2.0"]},
    )
    assert RunExecutor(doctor_settings, sessions, "w").execute(run_id) == "succeeded"

    attempts = detail(sessions, run_id).phases[0].attempts
    assert [(a.status, a.mitigation) for a in attempts] == [
        ("failed", "doctor:retry_with_command"),
        ("succeeded", None),
    ]
    assert attempts[1].commands == ["echo 2.0 > VERSION && grep -qx 2.0 VERSION"]
    [usage] = rows(sessions, LlmUsageEvent, run_id)
    assert (
        usage.provider,
        usage.model,
        usage.role,
        usage.is_doctor_call,
        usage.doctor_model_tier,
    ) == ("openai", "doc-cheap", "doctor", True, "cheap")
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.action) == (
        812,
        41,
        853,
        "retry_with_command",
    )
    [efficiency] = rows(sessions, TokenEfficiencyMetric, run_id)
    assert (
        efficiency.context_used_tokens
        <= efficiency.context_budget_tokens
        == doctor_settings.doctor_context_tokens
    )
    [metric] = rows(sessions, Phase6Metric, run_id)
    assert (
        metric.doctor_called
        and metric.doctor_action == "retry_with_command"
        and not metric.failure_hardening_triggered
    )
    assert metric.intention_context_injected and 0 < (metric.intention_context_chars or 0) <= 1024
    [request] = fake_llm.requests
    prompt = request["body"]["messages"][-1]["content"]
    assert "release check: VERSION is not 2.0" in prompt and "VERSION reads 2.0" in prompt
    assert "sk-test-secret" not in (attempts[0].output_tail or "")


def test_doctor_give_up_fails_phase_without_more_attempts(
    sessions: sessionmaker[Session],
    doctor_settings: Settings,
    submit_to: Callable[..., Submit],
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.enqueue('{"action": "give_up", "reason": "the license server is a human decision"}')
    run_id = submit_to({"a": "1"})(
        doctor_settings,
        [{"id": "lic", "run": "echo 'license expired' >&2; exit 3", "max_attempts": 5}],
    )
    assert RunExecutor(doctor_settings, sessions, "w").execute(run_id) == "failed"
    run = detail(sessions, run_id)
    assert len(run.phases[0].attempts) == 1
    assert "the Doctor gave up: the license server is a human decision" in (
        run.failure_reason or ""
    )


def test_doctor_patch_inside_scope_is_applied(
    sessions: sessionmaker[Session],
    doctor_settings: Settings,
    submit_to: Callable[..., Submit],
    fake_llm: FakeLLMServer,
) -> None:
    patch = "diff --git a/src/flag.txt b/src/flag.txt\n--- a/src/flag.txt\n+++ b/src/flag.txt\n@@ -1 +1 @@\n-off\n+on\n"
    fake_llm.enqueue(
        '{"action": "retry_with_patch", "patch": '
        + __import__("json").dumps(patch)
        + ', "reason": "turn the flag on"}'
    )
    run_id = submit_to({"src/flag.txt": "off\n"})(
        doctor_settings,
        [{"id": "flag", "run": "grep -qx on src/flag.txt", "scope": ["src/**"], "max_attempts": 2}],
    )
    assert RunExecutor(doctor_settings, sessions, "w").execute(run_id) == "succeeded"


def test_doctor_patch_outside_scope_is_rejected(
    sessions: sessionmaker[Session],
    doctor_settings: Settings,
    submit_to: Callable[..., Submit],
    fake_llm: FakeLLMServer,
) -> None:
    patch = "--- a/secret.txt\n+++ b/secret.txt\n@@ -1 +1 @@\n-a\n+b\n"
    fake_llm.enqueue(
        '{"action": "retry_with_patch", "patch": '
        + __import__("json").dumps(patch)
        + ', "reason": "x"}'
    )
    run_id = submit_to({"secret.txt": "a\n", "src/x": "1\n"})(
        doctor_settings,
        [{"id": "p", "run": "exit 1", "scope": ["src/**"], "max_attempts": 2}],
        doctor={"max_calls_per_phase": 1},
    )
    assert RunExecutor(doctor_settings, sessions, "w").execute(run_id) == "failed"
    with sessions() as session:
        log = repository.get_attempt_log(session, detail(sessions, run_id).phases[0].attempts[0])
    assert (
        log is not None
        and "patch rejected: the patch changes files outside the phase scope: secret.txt"
        in log.content
    )


def test_token_cap_stops_doctor_calls(
    sessions: sessionmaker[Session],
    doctor_settings: Settings,
    submit_to: Callable[..., Submit],
    fake_llm: FakeLLMServer,
) -> None:
    run_id = submit_to({"a": "1"})(
        doctor_settings,
        [{"id": "x", "run": "exit 1", "max_attempts": 3}],
        budgets={"token_cap": 100},
    )
    assert RunExecutor(doctor_settings, sessions, "w").execute(run_id) == "failed"
    assert fake_llm.requests == [] and rows(sessions, LlmUsageEvent, run_id) == []
    assert len(rows(sessions, Phase6Metric, run_id)) == 3


def test_without_provider_phase_fails_with_classified_reason(
    sessions: sessionmaker[Session], settings: Settings, submit_to: Callable[..., Submit]
) -> None:
    run_id = submit_to({"a": "1"})(
        settings, [{"id": "t", "run": "nosuchcommand_xyz --flag", "max_attempts": 2}]
    )
    assert RunExecutor(settings, sessions, "w").execute(run_id) == "failed"
    attempts = detail(sessions, run_id).phases[0].attempts
    assert [a.failure_class for a in attempts] == ["environment", "environment"]
    errors = rows(sessions, ErrorLog, run_id)
    assert (
        len(errors) == 2
        and errors[0].signature == errors[1].signature
        and not errors[0].hardening_caught
    )


def test_out_of_scope_changes_are_reverted_and_retry_keeps_in_scope_work(
    sessions: sessionmaker[Session],
    settings: Settings,
    submit_to: Callable[..., Submit],
    git: Callable[..., str],
) -> None:
    run_id = submit_to({"src/a.txt": "old\n", "README.md": "readme\n"})(
        settings,
        [
            {
                "id": "edit",
                "run": 'echo new > src/a.txt; if [ ! -e "$AUTOPACK_WORKTREE/../.tried-$AUTOPACK_RUN_ID" ]; then touch "$AUTOPACK_WORKTREE/../.tried-$AUTOPACK_RUN_ID"; echo vandal >> README.md; fi',
                "scope": ["src/**"],
            }
        ],
    )
    assert RunExecutor(settings, sessions, "w").execute(run_id) == "succeeded"
    run = detail(sessions, run_id)
    assert [(a.status, a.mitigation) for a in run.phases[0].attempts] == [
        ("failed", "scope_mismatch"),
        ("succeeded", None),
    ]
    mirror = settings.data_dir / "mirrors" / f"{run.repo}.git"
    assert git(mirror, "show", f"{run.result_commit}:README.md") == "readme\n"
    assert git(mirror, "show", f"{run.result_commit}:src/a.txt") == "new\n"


class ExplodingPattern:
    """A plugin whose detector raises: the run must not notice."""

    pattern_id, name, priority = "exploding", "explodes", 0

    def detect(self, ctx: FailureContext) -> bool:
        raise RuntimeError("plugin bug")

    def mitigate(self, ctx: FailureContext) -> MitigationResult:
        raise AssertionError("never reached")


def test_raising_plugin_is_skipped_and_builtins_still_act(
    sessions: sessionmaker[Session], settings: Settings, submit_to: Callable[..., Submit]
) -> None:
    run_id = submit_to({"run.sh": "#!/bin/sh\necho ran-it\n"})(
        settings, [{"id": "exec", "run": "./run.sh"}]
    )  # committed without the exec bit
    executor = RunExecutor(settings, sessions, "w")
    executor.registry = PatternRegistry([ExplodingPattern(), *PatternRegistry.default().patterns])
    assert executor.execute(run_id) == "succeeded"
    attempts = detail(sessions, run_id).phases[0].attempts
    assert [(a.status, a.mitigation) for a in attempts] == [
        ("failed", "permission_error"),
        ("succeeded", None),
    ]
    assert "ran-it" in (attempts[1].output_tail or "")


def test_disabled_pattern_is_not_applied(
    sessions: sessionmaker[Session], settings: Settings, submit_to: Callable[..., Submit]
) -> None:
    run_id = submit_to({"src/a.txt": "x\n", "b.txt": "b\n"})(
        settings,
        [{"id": "e", "run": "echo y >> b.txt", "scope": ["src/**"]}],
        hardening={"disable": ["scope_mismatch"]},
    )
    assert RunExecutor(settings, sessions, "w").execute(run_id) == "failed"
    attempt = detail(sessions, run_id).phases[0].attempts[0]
    assert attempt.mitigation is None and attempt.failure_class == "scope"


def test_entry_point_patterns_are_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "acme_patterns.py"
    package.write_text(
        "class AcmePattern:\n    pattern_id, name, priority = 'acme_flaky', 'Acme flaky', 50\n"
        "    def detect(self, ctx):\n        return False\n    def mitigate(self, ctx):\n        raise NotImplementedError\n"
        "PATTERNS = [AcmePattern()]\n"
    )
    dist = tmp_path / "acme_patterns-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-patterns\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[autopack.failure_patterns]\nacme = acme_patterns:PATTERNS\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "acme_flaky" in PatternRegistry.default().ids()
    assert (
        subprocess.run(
            [sys.executable, "-c", "import acme_patterns"], cwd=tmp_path, check=False
        ).returncode
        == 0
    )


def test_run_model_mapping_overrides_settings(
    sessions: sessionmaker[Session],
    doctor_settings: Settings,
    submit_to: Callable[..., Submit],
    fake_llm: FakeLLMServer,
) -> None:
    fake_llm.enqueue('{"action": "give_up", "reason": "enough"}')
    run_id = submit_to({"a": "1"})(
        doctor_settings,
        [{"id": "x", "run": "exit 1", "max_attempts": 2}],
        doctor={"model_cheap": "arm-b-model"},
    )
    RunExecutor(doctor_settings, sessions, "w").execute(run_id)
    [usage] = rows(sessions, LlmUsageEvent, run_id)
    assert usage.model == "arm-b-model" and fake_llm.requests[0]["body"]["model"] == "arm-b-model"
