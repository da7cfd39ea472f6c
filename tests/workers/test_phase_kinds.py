"""`validate` and `patch` phases in the real executor."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.models import Run
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from workers.executor import RunExecutor

PY_PROJECT = {
    "pyproject.toml": '[project]\nname = "calc"\nversion = "0.1"\n',
    "calc.py": "def add(a, b):\n    return a + b\n",
    "tests/__init__.py": "",
    "tests/test_calc.py": "import unittest\nfrom calc import add\n\nclass T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 2), 4)\n",
}
NODE_PROJECT = {
    "package.json": '{"name": "calc", "version": "1.0.0", "scripts": {"test": "node test.js"}}\n',
    "index.js": "module.exports = (a, b) => a + b;\n",
    "test.js": "const add = require('./index');\nif (add(2, 2) !== 4) { throw new Error('bad'); }\nconsole.log('node tests ok');\n",
}


@pytest.fixture
def run_on(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> Callable[..., Run]:
    """Execute phases against a fresh repository with files; returns the finished run."""

    def execute(files: dict[str, str], phases: list[dict[str, Any]]) -> Run:
        origin = make_repo(files, name=f"o-{uuid.uuid4().hex[:6]}")
        name = f"kinds-{uuid.uuid4().hex[:8]}"
        with transaction(sessions) as session:
            repos.add(session, name, str(origin))
            run_id = service.submit(
                session,
                settings,
                RunCreate.model_validate({"repo": name, "goal": "g", "phases": phases}),
            ).run.id
        RunExecutor(settings, sessions, "w").execute(run_id)
        with sessions() as session:
            return repository.get_run_detail(session, run_id)

    return execute


def test_validate_runs_inferred_python_test_command(run_on: Callable[..., Run]) -> None:
    run = run_on(PY_PROJECT, [{"id": "v", "kind": "validate", "steps": ["test"]}])
    assert run.status == "succeeded", run.failure_reason
    attempt = run.phases[0].attempts[0]
    assert attempt.commands == [
        "python -m pytest"
    ]  # a tests/ directory makes the adapter choose pytest
    assert "1 passed" in (attempt.output_tail or "")


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not installed",
)
def test_validate_runs_inferred_node_test_command_in_cwd(run_on: Callable[..., Run]) -> None:
    files = {f"web/{k}": v for k, v in NODE_PROJECT.items()} | {"README.md": "monorepo\n"}
    run = run_on(files, [{"id": "v", "kind": "validate", "steps": ["test"], "cwd": "web"}])
    assert run.status == "succeeded", run.failure_reason
    attempt = run.phases[0].attempts[0]
    assert attempt.commands == ["npm test"]
    assert "node tests ok" in (attempt.output_tail or "")


def test_validate_without_toolchain_fails_with_reason(run_on: Callable[..., Run]) -> None:
    run = run_on({"notes.txt": "nothing to build\n"}, [{"id": "v", "kind": "validate"}])
    assert run.status == "failed"
    assert "no toolchain detected in the worktree root" in (run.phases[0].failure_reason or "")


def test_patch_phase_applies_diff_and_checkpoints_it(
    run_on: Callable[..., Run], settings: Settings, git: Callable[..., str]
) -> None:
    diff = "--- a/src/greet.txt\n+++ b/src/greet.txt\n@@ -1 +1 @@\n-hello\n+hello, world\n"
    run = run_on(
        {"src/greet.txt": "hello\n"},
        [
            {"id": "p", "kind": "patch", "patch": diff, "scope": ["src/**"]},
            {"id": "check", "run": "grep -qx 'hello, world' src/greet.txt"},
        ],
    )
    assert run.status == "succeeded", run.failure_reason
    mirror = settings.data_dir / "mirrors" / f"{run.repo}.git"
    assert (
        git(mirror, "show", f"{run.phases[0].checkpoint_commit}:src/greet.txt") == "hello, world\n"
    )


@pytest.mark.parametrize(
    ("diff", "reason"),
    [
        (
            "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-x\n+y\n",
            "outside the phase scope: README.md",
        ),
        (
            "--- a/src/greet.txt\n+++ b/src/greet.txt\n@@ -1 +1 @@\n-not what is there\n+y\n",
            "the patch does not apply",
        ),
        ("--- a/../escape.txt\n+++ b/../escape.txt\n@@ -0,0 +1 @@\n+y\n", "outside the worktree"),
        ("just some text\n", "names no files"),
    ],
)
def test_patch_phase_rejects_bad_patch_with_reason(
    run_on: Callable[..., Run], diff: str, reason: str
) -> None:
    run = run_on(
        {"src/greet.txt": "hello\n", "README.md": "x\n"},
        [{"id": "p", "kind": "patch", "patch": diff, "scope": ["src/**"]}],
    )
    assert run.status == "failed"
    assert reason in (run.phases[0].failure_reason or "")


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        ({"id": "a", "kind": "shell"}, "a shell phase needs `run`"),
        ({"id": "a", "kind": "patch", "run": "x"}, "a patch phase needs `patch`"),
        ({"id": "a", "kind": "validate", "run": "x"}, "a validate phase does not take `run`"),
        (
            {"id": "a", "kind": "builder", "run": "x"},
            "Input should be 'shell', 'validate' or 'patch'",
        ),
    ],
)
def test_phase_kind_fields_are_validated(phase: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RunCreate.model_validate({"repo": "r", "goal": "g", "phases": [phase]})
