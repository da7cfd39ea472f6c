"""Scaffolded failure patterns: written from real uncaught failures, importable, and their tests pass."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.analysis import (
    PatternGroup,
    PatternSample,
    analyze_uncaught,
    detection_regex,
    group_signature,
    pattern_class_name,
    scaffold_patterns,
)
from shared.analysis.scaffold import PYPROJECT_SNIPPET, README
from shared.db import transaction
from shared.failures import (
    classify_failure,
    confidence_for_count,
    normalize_error_message,
    strip_ansi,
    suggest_pattern_id,
)
from shared.models import ErrorLog
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from workers.executor import RunExecutor
from workers.hardening.base import CommandOutcome, FailureContext
from workers.hardening.registry import PatternRegistry

OPEN_MISSING = "python3 -c \"import os; open('/tmp/x-' + os.urandom(4).hex())\""


def make_origin(path: Path, files: dict[str, str]) -> Path:
    """A git repository with files committed on main."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    path.mkdir(parents=True)
    for rel, content in files.items():
        (path / rel).write_text(content)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    return path


def execute(
    settings: Settings, sessions: sessionmaker[Session], repo: str, phases: list[dict[str, Any]]
) -> str:
    """Submit a run and execute it in-process with the real executor; returns its id."""
    spec = RunCreate.model_validate({"repo": repo, "goal": "make it pass", "phases": phases})
    with transaction(sessions) as session:
        run_id = service.submit(session, settings, spec).run.id
    assert RunExecutor(settings, sessions, "w").execute(run_id) == "failed"
    return run_id


@pytest.fixture(scope="module")
def real_groups(
    settings: Settings, sessions: sessionmaker[Session], tmp_path_factory: pytest.TempPathFactory
) -> list[PatternGroup]:
    """Groups of real uncaught failures: a missing file twice, an assertion, a missing command."""
    origin = make_origin(
        tmp_path_factory.mktemp("scaffold") / "origin",
        {"check.py": 'x = 1\nassert x == 2, "x should be two, not " + str(x)\n'},
    )
    repo = f"scaf-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, repo, str(origin))
    started = datetime.now(UTC)
    execute(settings, sessions, repo, [{"id": "open", "run": OPEN_MISSING, "max_attempts": 2}])
    execute(settings, sessions, repo, [{"id": "open", "run": OPEN_MISSING}])
    execute(settings, sessions, repo, [{"id": "check", "run": "python3 check.py"}])
    execute(settings, sessions, repo, [{"id": "cmd", "run": "nosuchcommand_xyz --flag"}])
    with sessions() as session:
        groups = analyze_uncaught(session, since=started, until=datetime.now(UTC))
    # equal counts: the more recent group first
    assert [(g.error_type, g.count) for g in groups] == [
        ("file_not_found", 3),
        ("command_not_found", 1),
        ("assertion_error", 1),
    ]
    return groups


def import_generated(path: Path) -> ModuleType:
    """Import a generated module from its file under a unique name, leaving sys.path alone."""
    spec = importlib.util.spec_from_file_location(f"scaffolded_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NoShell:
    """A shell detectors must never need."""

    def run(
        self, command: str, *, cwd: Path | None = None, timeout_s: float = 600
    ) -> CommandOutcome:
        """Fail the test: detection has to be side-effect free."""
        raise AssertionError(f"detect ran {command}")


def context_for(output: str, tmp_path: Path) -> FailureContext:
    """The context the executor builds for a failed attempt with this output."""
    failure = classify_failure(
        exit_code=1, timed_out=False, signal=None, output_tail=output, scope_violations=()
    )
    return FailureContext(
        run_id="run-x",
        phase_id="p",
        attempt=1,
        worktree=tmp_path,
        cwd=tmp_path,
        commands=("true",),
        exit_code=1,
        signal=None,
        timed_out=False,
        output=output,
        failure=failure,
        scope=(),
        outside_scope=(),
        env={},
        shell=NoShell(),
    )


def test_scaffold_writes_module_test_and_registration_notes(
    real_groups: list[PatternGroup], tmp_path: Path
) -> None:
    target = tmp_path / "plugins"
    written = scaffold_patterns(real_groups, target, top=2)
    ids = [g.suggested_pattern_id for g in real_groups[:2]]
    assert written == [
        target / f"{ids[0]}.py",
        target / f"test_{ids[0]}.py",
        target / f"{ids[1]}.py",
        target / f"test_{ids[1]}.py",
        target / README,
        target / PYPROJECT_SNIPPET,
    ]
    snippet = (target / PYPROJECT_SNIPPET).read_text()
    readme = (target / README).read_text()
    assert '[project.entry-points."autopack.failure_patterns"]' in snippet
    for pattern_id in ids:
        line = f'{pattern_id} = "{pattern_id}:{pattern_class_name(pattern_id)}"'
        assert line in snippet and line in readme
    assert real_groups[2].suggested_pattern_id not in snippet


def test_scaffolded_module_detects_other_occurrences_of_its_group(
    real_groups: list[PatternGroup],
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    group = real_groups[0]
    scaffold_patterns([group], tmp_path, top=1)
    module = import_generated(tmp_path / f"{group.suggested_pattern_id}.py")
    pattern = getattr(module, pattern_class_name(group.suggested_pattern_id))()
    assert (pattern.pattern_id, pattern.priority) == (group.suggested_pattern_id, 100)
    with sessions() as session:
        outputs = session.scalars(
            select(ErrorLog.sample).where(ErrorLog.run_id.in_(group.run_ids))
        ).all()
    # every recorded occurrence names a different temporary file, and all are detected
    assert len(set(outputs)) == 3
    assert all(pattern.detect(context_for(output, tmp_path)) for output in outputs)
    other = real_groups[1].sample.excerpt
    assert pattern.detect(context_for(other, tmp_path)) is False


def test_scaffolded_module_registers_without_acting(
    real_groups: list[PatternGroup], tmp_path: Path
) -> None:
    group = real_groups[0]
    scaffold_patterns([group], tmp_path, top=1)
    module = import_generated(tmp_path / f"{group.suggested_pattern_id}.py")
    registry = PatternRegistry([getattr(module, pattern_class_name(group.suggested_pattern_id))()])
    applied, suggestions = registry.mitigate(context_for(group.sample.excerpt, tmp_path))
    assert applied is None
    assert len(suggestions) == 1 and suggestions[0].startswith(
        f"{group.suggested_pattern_id}: TODO"
    )


def test_scaffolded_tests_pass_as_written(real_groups: list[PatternGroup], tmp_path: Path) -> None:
    scaffold_patterns(real_groups, tmp_path, top=3)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed" in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_scaffolded_files_pass_lint(real_groups: list[PatternGroup], tmp_path: Path) -> None:
    scaffold_patterns(real_groups, tmp_path, top=3)
    rules = ["--select", "E,F,W,I,B,UP,RUF", "--ignore", "E501", "--line-length", "100"]
    # run from the plugin directory, as in a plugin project: its modules are first-party there
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", *rules, "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scaffold_never_overwrites_existing_files(
    real_groups: list[PatternGroup], tmp_path: Path
) -> None:
    group = real_groups[0]
    mine = tmp_path / f"{group.suggested_pattern_id}.py"
    mine.write_text("# my finished pattern\n")
    (tmp_path / README).write_text("my notes\n")
    skipped: list[Path] = []
    written = scaffold_patterns([group], tmp_path, top=1, on_skip=skipped.append)
    assert skipped == [mine, tmp_path / README]
    assert mine.read_text() == "# my finished pattern\n"
    assert (tmp_path / README).read_text() == "my notes\n"
    assert written == [
        tmp_path / f"test_{group.suggested_pattern_id}.py",
        tmp_path / PYPROJECT_SNIPPET,
    ]
    assert scaffold_patterns([group], tmp_path, top=1) == []


def synthetic(message: str, error_type: str = "value_error", count: int = 1) -> PatternGroup:
    """A group built by hand, for the parts of scaffolding that need no database."""
    normalized = normalize_error_message(message)
    at = datetime(2024, 5, 1, tzinfo=UTC)
    return PatternGroup(
        signature=group_signature("unknown", normalized),
        error_type=error_type,
        failure_class="unknown",
        count=count,
        confidence=confidence_for_count(count),
        run_ids=("run-a",),
        phase_ids=("p",),
        first_seen=at,
        last_seen=at,
        sample=PatternSample("run-a", "p", 1, message, message),
        normalized_message=normalized,
        suggested_pattern_id=suggest_pattern_id(error_type, normalized),
    )


def test_scaffold_limits_to_top_and_skips_duplicate_ids(tmp_path: Path) -> None:
    first = synthetic("ValueError: bad input in /srv/app/a.py")
    # same message, other failure class: the same suggested id, so only the first is written
    twin = replace(first, failure_class="test", signature="0" * 64)
    second = synthetic("ValueError: unexpected token at line 4")
    third = synthetic("ValueError: something else")
    written = scaffold_patterns([first, twin, second, third], tmp_path, top=2)
    modules = sorted(
        p.name for p in written if p.suffix == ".py" and not p.name.startswith("test_")
    )
    assert modules == sorted(
        [f"{first.suggested_pattern_id}.py", f"{second.suggested_pattern_id}.py"]
    )


def test_scaffold_with_top_zero_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "never"
    assert scaffold_patterns([synthetic("ValueError: x")], target, top=0) == []
    assert not target.exists()
    with pytest.raises(ValueError, match="top"):
        scaffold_patterns([], target, top=-1)


@pytest.mark.parametrize(
    "message",
    [
        "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/x-06dcbaf1'",
        "/bin/bash: line 3: nosuchcommand_xyz: command not found",
        'KeyError: "missing_key" while reading "config.yaml"',
        "2024-05-01 10:00:01,123 ERROR worker at 0x7f3a2b1c crashed after 12.5s",
        '  File "<string>", line 1, in <module>\n    ValueError:   spaced\tout',
        "\x1b[31mFAILED\x1b[0m tests/test_app.py::test_x - assert 3 == 4",
        "error: could not fetch https://example.com/pkg/1.2.3.tar.gz (status 503)",
        "Traceback note: C:\\Users\\dev\\proj\\main.py(42) failed with 3 errors",
        "tmpab12cd34ef failed: hash 9f86d081884c7d65 mismatch, failures=3",
        "regex chars survive: a+b (c) [d] {e} ^$ | * ? \\ end",
    ],
)
def test_detection_regex_matches_raw_message(message: str) -> None:
    regex = re.compile(detection_regex(normalize_error_message(message)))
    assert regex.search(strip_ansi(message)) is not None
    assert regex.search("an entirely different failure") is None


def test_detection_regex_of_empty_message_matches_only_empty() -> None:
    regex = re.compile(detection_regex(""))
    assert regex.search("") is not None and regex.search("anything") is None


def test_pattern_class_name_is_identifier() -> None:
    name = pattern_class_name("file_not_found_errno_no_1a2b3c4d")
    assert name == "FileNotFoundErrnoNo1a2b3c4dPattern" and name.isidentifier()
    assert pattern_class_name("9_lives").isidentifier()
