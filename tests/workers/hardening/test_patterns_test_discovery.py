"""missing_test_discovery with real pytest and unittest runs that discover nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from workers.hardening.patterns.test_discovery import MissingTestDiscovery, rewrite
from workers.hardening.testing import init_repo, make_context, phase_env, retry_phase

PATTERN = MissingTestDiscovery()
PYTEST = f"{sys.executable} -m pytest -q -p no:cacheprovider"
A_TEST = "def test_one():\n    assert 1 + 1 == 2\n"


def test_name_tests_directory_when_pytest_config_hides_it(tmp_path: Path) -> None:
    files = {"pytest.ini": "[pytest]\nnorecursedirs = tests\n", "tests/test_math.py": A_TEST}
    repo = init_repo(tmp_path / "repo", files)
    ctx = make_context(f"{PYTEST} 2>&1", worktree=repo, env=phase_env(tmp_path / "home"))
    assert ctx.exit_code == 5 and PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.changed and result.retry is not None
    assert result.retry.commands == (f"{PYTEST} tests 2>&1",)
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "1 passed" in retry.output


def test_name_test_files_when_python_files_pattern_misses_them(tmp_path: Path) -> None:
    files = {
        "pyproject.toml": '[tool.pytest.ini_options]\npython_files = ["check_*.py"]\n',
        "tests/test_math.py": A_TEST,
        "tests/math_checks.py": A_TEST,  # a module of tests/ counts whatever its name
        "tests/conftest.py": "",
        "src/pkg/tests/test_more.py": A_TEST,
        "node_modules/dep/test_vendored.py": "raise SystemExit('never collected')\n",
    }
    repo = init_repo(tmp_path / "repo", files)
    ctx = make_context(["true", PYTEST], worktree=repo, env=phase_env(tmp_path / "home"))
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.retry is not None and result.retry.commands == (
        "true",
        f"{PYTEST} src/pkg/tests/test_more.py tests/math_checks.py tests/test_math.py",
    )
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "3 passed" in retry.output


def test_discover_unittest_files_with_their_own_pattern(tmp_path: Path) -> None:
    files = {"tests/__init__.py": "", "tests/math_test.py": unittest_case()}
    repo = init_repo(tmp_path / "repo", files)
    # Python < 3.12 exits 0 when nothing ran; the output still shows the runner found nothing
    ctx = make_context("python3 -m unittest -v", worktree=repo, env=phase_env(tmp_path / "home"))
    assert "Ran 0 tests" in ctx.output and PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.retry is not None and result.retry.commands == (
        "python3 -m unittest discover -s tests -t . -p '*_test.py' -v",
    )
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "Ran 1 test" in retry.output


def test_give_up_when_project_has_no_tests(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"app.py": "print('hi')\n"})
    ctx = make_context(PYTEST, worktree=repo, env=phase_env(tmp_path / "home"))
    assert ctx.exit_code == 5 and PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.give_up_reason == "the project has no tests"
    assert not result.changed and result.retry is None


def test_suggest_location_when_tests_are_outside_phase_directory(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"docs/readme.md": "x\n", "tests/test_a.py": A_TEST})
    ctx = make_context(PYTEST, worktree=repo, cwd=repo / "docs", env=phase_env(tmp_path / "home"))

    result = PATTERN.mitigate(ctx)

    assert result.give_up_reason is None and not result.changed
    assert "tests exist outside the phase's directory: tests" in result.suggestions[0]


def test_detect_nothing_when_tests_failed(tmp_path: Path) -> None:
    files = {"tests/test_bad.py": "def test_bad():\n    assert False\n"}
    repo = init_repo(tmp_path / "repo", files)
    ctx = make_context(PYTEST, worktree=repo, env=phase_env(tmp_path / "home"))

    assert ctx.exit_code == 1 and not PATTERN.detect(ctx)


@pytest.mark.parametrize(
    ("command", "kind", "targets", "expected"),
    [
        ("pytest -q", "pytest", ["tests"], "pytest -q tests"),
        (
            "cd app && pytest -k smoke -x && echo done",
            "pytest",
            ["t"],
            "cd app && pytest -k smoke -x t && echo done",
        ),
        (
            "pip install pytest-xdist && pytest -n 2",
            "pytest",
            ["tests"],
            "pip install pytest-xdist && pytest -n 2 tests",
        ),
        ("pytest tests/unit", "pytest", ["tests"], None),
        ("go test", "go", ["pkg"], "go test ./..."),
        ("go test ./cmd", "go", ["pkg"], None),
        ("npx jest --ci", "jest", ["test"], "npx jest --ci --roots test"),
        ("python -m unittest discover -s x", "unittest", ["tests"], None),
    ],
)
def test_rewrite_test_command_to_name_targets(
    tmp_path: Path, command: str, kind: str, targets: list[str], expected: str | None
) -> None:
    assert rewrite(command, kind, tmp_path, targets) == expected


def unittest_case() -> str:
    return (
        "import unittest\n\n\nclass MathTest(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(1 + 1, 2)\n"
    )
