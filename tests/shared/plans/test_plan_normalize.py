"""Tests for plan normalization: steps, commands, validate phases, scope, ids and confidence."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.plans import DEFAULT_MIN_CONFIDENCE, ToolchainLike, accept, normalize_plan
from shared.runs.spec import PHASE_ID_PATTERN, PhaseSpec, RunCreate
from workers.toolchain import detect

ARCHITECTURE_PLAN = "1. install the project  2. run the tests"
PYPROJECT = '[project]\nname = "app"\nversion = "0.1.0"\n'
PACKAGE_JSON = json.dumps({"name": "web", "scripts": {"build": "tsc", "test": "jest"}})


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return root


@pytest.fixture
def python_project(tmp_path: Path) -> Path:
    """A pip-installable Python project with a tests/ directory."""
    return _write(
        tmp_path,
        {
            "pyproject.toml": PYPROJECT,
            "src/app.py": "print('hello')\n",
            "tests/test_app.py": "def test_ok():\n    assert True\n",
        },
    )


@pytest.fixture
def monorepo(tmp_path: Path) -> Path:
    """A Python service in api/ and a node frontend in web/, nothing at the root."""
    return _write(
        tmp_path,
        {
            "api/pyproject.toml": PYPROJECT,
            "api/tests/test_api.py": "def test_ok():\n    assert True\n",
            "web/package.json": PACKAGE_JSON,
        },
    )


@dataclass(frozen=True)
class FakeToolchain:
    toolchain: str
    directory: str
    confidence: float = 0.9
    install: tuple[str, ...] = ("make install",)
    build: tuple[str, ...] = ()
    test: tuple[str, ...] = ("make test",)
    smoke: tuple[str, ...] = ()


def _kinds(plan_phases: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(p["id"], p["kind"], tuple(p.get("steps") or p.get("run") or ())) for p in plan_phases]


def test_normalize_architecture_example_with_detection_yields_install_and_test(
    python_project: Path,
) -> None:
    plan = normalize_plan(ARCHITECTURE_PLAN, worktree=python_project, detect=detect)
    assert _kinds(plan.phases) == [
        ("install", "validate", ("install",)),
        ("run-tests", "validate", ("test",)),
    ]
    assert plan.confidence >= 0.8
    assert plan.warnings == []
    assert plan.decisions[1] == "step 2 'run the tests' → validate phase (python, steps: test)"
    assert accept(plan, DEFAULT_MIN_CONFIDENCE, force=False) is None


def test_normalize_without_detection_lowers_confidence_and_warns() -> None:
    plan = normalize_plan(ARCHITECTURE_PLAN)
    assert [p["steps"] for p in plan.phases] == [["install"], ["test"]]
    assert plan.confidence == pytest.approx(0.6)
    assert any("no toolchain detection" in warning for warning in plan.warnings)


def test_normalize_bullets_with_backtick_commands_become_shell_phases() -> None:
    plan = normalize_plan(
        "- Lint with `make lint`\n* then `$ pytest -q` and `ruff check .`\n+ `npm run build`"
    )
    assert _kinds(plan.phases) == [
        ("lint-make-lint", "shell", ("make lint",)),
        ("pytest-q-ruff", "shell", ("pytest -q", "ruff check .")),
        ("npm-run-build", "shell", ("npm run build",)),
    ]
    assert plan.confidence == 1.0


def test_normalize_fenced_block_strips_prompts_and_drops_output() -> None:
    text = (
        "Set up the tools:\n\n```bash\n$ pip install -e .\nSuccessfully installed\n$ pytest\n```\n"
    )
    plan = normalize_plan(text)
    assert _kinds(plan.phases) == [("set-up-tools", "shell", ("pip install -e .", "pytest"))]


def test_normalize_fenced_block_without_prompts_keeps_every_command() -> None:
    text = "1. Check\n   ```sh\n   # comment\n   make lint\n   make \\\n     test\n   ```\n"
    plan = normalize_plan(text)
    assert plan.phases[0]["run"] == ["make lint", "make test"]


def test_normalize_non_shell_fence_is_ignored_with_warning() -> None:
    plan = normalize_plan("- Add the helper\n  ```python\n  print('x')\n  ```\n")
    assert plan.phases == []
    assert any("```python" in warning for warning in plan.warnings)


def test_normalize_nested_bullets_belong_to_parent_step() -> None:
    text = "1. Prepare\n   - `make deps`\n   - `make gen`\n2. run the tests\n"
    plan = normalize_plan(text)
    assert _kinds(plan.phases) == [
        ("prepare", "shell", ("make deps", "make gen")),
        ("run-tests", "validate", ("test",)),
    ]


def test_normalize_scope_extracts_paths_and_drops_unsafe_ones() -> None:
    text = (
        "- Run the tests for src/app.py, `tests/` and docs/**/*.md\n"
        "- Run `make check` on ../outside.py and /etc/passwd\n"
    )
    plan = normalize_plan(text)
    assert plan.phases[0]["scope"] == ["src/app.py", "tests/**", "docs/**/*.md"]
    assert plan.phases[1]["scope"] == []
    dropped = [w for w in plan.warnings if "dropped path" in w]
    assert len(dropped) == 2 and "'../outside.py'" in dropped[0] and "/etc/passwd" in dropped[1]


def test_normalize_scope_uses_worktree_to_tell_files_from_directories(
    python_project: Path,
) -> None:
    _write(python_project, {"bin/run": "#!/bin/sh\n", "etc/conf.d/a.conf": "x=1\n"})
    plan = normalize_plan(
        "- Run the tests with `bin/run`, `etc/conf.d` and src/app.py", worktree=python_project
    )
    assert plan.phases[0]["scope"] == ["bin/run", "etc/conf.d/**", "src/app.py"]
    sized = ("bin/run", "etc/conf.d/a.conf", "src/app.py")
    assert plan.scope_size_bytes == sum((python_project / p).stat().st_size for p in sized)


def test_normalize_scope_guesses_directories_without_worktree() -> None:
    plan = normalize_plan("- Run the tests with `bin/run` and `etc/conf.d`")
    assert plan.phases[0]["scope"] == ["bin/run/**", "etc/conf.d"]


def test_normalize_scope_size_is_zero_without_worktree() -> None:
    assert normalize_plan("- Run the tests in src/app.py").scope_size_bytes == 0


def test_normalize_prose_product_names_are_not_paths() -> None:
    plan = normalize_plan("- Run the Node.js tests, e.g. the and/or cases")
    assert plan.phases[0]["scope"] == []


def test_normalize_monorepo_named_component_gets_cwd(monorepo: Path) -> None:
    plan = normalize_plan(
        "1. run the web tests\n2. install the api", worktree=monorepo, detect=detect
    )
    assert [(p["id"], p.get("cwd"), p["steps"]) for p in plan.phases] == [
        ("run-web-tests", "web", ["test"]),
        ("install-api", "api", ["install"]),
    ]
    assert (
        plan.decisions[0]
        == "step 1 'run the web tests' → validate phase (node in web, steps: test)"
    )


def test_normalize_section_heading_names_component(monorepo: Path) -> None:
    plan = normalize_plan("## Web\n\n- run the tests\n", worktree=monorepo, detect=detect)
    assert [(p["id"], p.get("cwd")) for p in plan.phases] == [("run-tests", "web")]


def test_normalize_monorepo_unnamed_step_validates_every_component(monorepo: Path) -> None:
    plan = normalize_plan("- run the tests", worktree=monorepo, detect=detect)
    assert [(p["id"], p.get("cwd")) for p in plan.phases] == [
        ("run-tests-api", "api"),
        ("run-tests-web", "web"),
    ]
    assert plan.confidence == pytest.approx(0.9)


def test_normalize_missing_step_commands_are_dropped(python_project: Path) -> None:
    plan = normalize_plan("- install and build", worktree=python_project, detect=detect)
    assert plan.phases[0]["steps"] == ["install"]
    assert "no build commands, dropped" in plan.decisions[0]


def test_normalize_unconfirmed_validate_warns_and_scores_lower(tmp_path: Path) -> None:
    plan = normalize_plan("- run the tests", worktree=tmp_path, detect=detect)
    assert plan.phases[0]["steps"] == ["test"]
    assert plan.confidence == pytest.approx(0.6)
    assert any("has no toolchain" in warning for warning in plan.warnings)


def test_normalize_fake_detector_satisfies_protocol(tmp_path: Path) -> None:
    def fake(path: Path) -> Sequence[ToolchainLike]:
        return [FakeToolchain("python", ".", confidence=0.5), FakeToolchain("go", ".")]

    plan = normalize_plan("- run the tests", worktree=tmp_path, detect=fake)
    # The most confident toolchain of a directory is the one the executor will pick.
    assert "(go, steps: test)" in plan.decisions[0]


def test_normalize_detection_failure_warns_and_falls_back(tmp_path: Path) -> None:
    plan = normalize_plan("- run the tests", worktree=tmp_path / "missing", detect=detect)
    assert plan.phases[0]["kind"] == "validate"
    assert any("toolchain detection failed" in warning for warning in plan.warnings)


def test_normalize_lint_maps_to_build_with_note() -> None:
    plan = normalize_plan("- lint the code")
    assert plan.phases[0]["steps"] == ["build"]
    assert "lint has no step of its own" in plan.decisions[0]


def test_normalize_smoke_test_is_not_a_test_step() -> None:
    plan = normalize_plan("- run a smoke test")
    assert plan.phases[0]["steps"] == ["smoke"]


def test_normalize_creation_step_is_not_validation() -> None:
    plan = normalize_plan("- Write tests for the parser")
    assert plan.phases == []
    assert "neither a command nor a recognized action" in plan.warnings[0]


def test_normalize_change_step_that_says_run_validates() -> None:
    plan = normalize_plan("- Fix the parser and make sure tests pass")
    assert _kinds(plan.phases) == [("fix-parser-tests", "validate", ("test",))]


def test_normalize_deliverables_come_from_heading_and_phrases() -> None:
    text = (
        "# Plan\n\n1. Produce `reports/summary.md` from the data\n"
        "2. create a new file called notes.txt\n\n"
        "## Deliverables\n\n- `docs/guide.md` - the user guide\n- a changelog entry\n"
        "- ../escape.md\n"
    )
    plan = normalize_plan(text)
    assert plan.deliverables == [
        "docs/guide.md",
        "a changelog entry",
        "reports/summary.md",
        "notes.txt",
    ]
    assert any("../escape.md" in warning for warning in plan.warnings)


def test_normalize_deliverables_label_line_lists_outputs() -> None:
    plan = normalize_plan("Outputs: `out/a.json`\n- out/b.json\n\n1. `make all`\n")
    assert plan.deliverables == ["out/a.json", "out/b.json"]
    assert [p["run"] for p in plan.phases] == [["make all"]]


def test_normalize_repeated_steps_get_unique_ids() -> None:
    plan = normalize_plan("1. run the tests\n2. `make fix`\n3. run the tests\n4. run the tests")
    assert [p["id"] for p in plan.phases] == ["run-tests", "make-fix", "run-tests-2", "run-tests-3"]


@pytest.mark.parametrize(
    "text",
    [
        "- Ünïcödé ßteps: run the tests",
        "- " + "verylongword" * 20 + " run the tests",
        "- !!! run the tests ???",
        "- `./scripts/check.sh --all`",
    ],
)
def test_normalize_ids_match_phase_id_pattern(text: str) -> None:
    plan = normalize_plan(text + "\n" + text)
    ids = [p["id"] for p in plan.phases]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(re.match(PHASE_ID_PATTERN, phase_id) for phase_id in ids)


def test_normalize_vague_plan_scores_low_and_accept_refuses_unless_forced() -> None:
    plan = normalize_plan("- think about the architecture\n- consider the trade-offs\n- `make`")
    assert plan.confidence == pytest.approx(0.33)
    reason = accept(plan, DEFAULT_MIN_CONFIDENCE, force=False)
    assert reason is not None and "think about the architecture" in reason
    assert accept(plan, DEFAULT_MIN_CONFIDENCE, force=True) is None


def test_accept_plan_without_phases_refuses() -> None:
    plan = normalize_plan("think about the architecture")
    assert plan.confidence == 0.0
    assert accept(plan, 0.0, force=False) is not None


def test_normalize_empty_plan_has_no_phases_and_warns() -> None:
    plan = normalize_plan("  \n\n")
    assert (plan.phases, plan.confidence, plan.warnings) == ([], 0.0, ["the plan has no steps"])


def test_normalize_inline_step_labels_split() -> None:
    plan = normalize_plan("Step 1: install dependencies. Step 2: run the tests.")
    assert [p["steps"] for p in plan.phases] == [["install"], ["test"]]


def test_normalize_prose_around_a_list_is_context() -> None:
    plan = normalize_plan("# Upgrade plan\n\nThis plan bumps things.\n\n- run the tests\n")
    assert [p["id"] for p in plan.phases] == ["run-tests"]
    assert plan.confidence == pytest.approx(0.6)


def test_normalize_headings_without_lists_are_steps() -> None:
    plan = normalize_plan("## Install dependencies\n\n## Run the tests\nMake sure they pass.\n")
    assert [p["id"] for p in plan.phases] == ["install-dependencies", "run-tests"]


def test_normalize_same_input_gives_same_output(monorepo: Path) -> None:
    text = "## Web\n- run the tests\n- `make lint` in web/\n\n## Deliverables\n- out.txt\n"
    first = normalize_plan(text, worktree=monorepo, detect=detect).to_dict()
    second = normalize_plan(text, worktree=monorepo, detect=detect).to_dict()
    assert first == second
    assert json.loads(json.dumps(first)) == first


@pytest.mark.parametrize(
    "text",
    [
        ARCHITECTURE_PLAN,
        "- run the web tests\n- build the api\n- `make lint` on src/ and ../x\n",
        "```bash\n$ make\n```\n\n## Deliverables\n- a.txt\n",
        "1. Step 1: install\n   - nested `ls -la`\n2) lint\n* smoke test it\n",
        "- `" + "x" * 30_000 + " --flag`",
    ],
)
def test_normalize_every_phase_validates_as_phase_spec(text: str, monorepo: Path) -> None:
    for plan in (normalize_plan(text), normalize_plan(text, worktree=monorepo, detect=detect)):
        for phase in plan.phases:
            assert (
                PhaseSpec.model_validate(phase).model_dump(mode="json", exclude_unset=True) == phase
            )
        if plan.phases:
            RunCreate.model_validate({"repo": "demo", "goal": "g", "phases": plan.phases})


def test_normalize_overlong_command_is_dropped_with_warning() -> None:
    plan = normalize_plan("- `" + "x" * 30_000 + " --flag`")
    assert plan.phases == []
    assert plan.confidence == 0.0
    assert any("dropped" in warning for warning in plan.warnings)


def test_normalize_output_line_inside_a_step_does_not_end_the_list() -> None:
    plan = normalize_plan("1. Build with `make`\n   Output: dist/app.js\n2. run the tests\n")
    assert [(p["id"], p["scope"]) for p in plan.phases] == [
        ("build-make", ["dist/app.js"]),
        ("run-tests", []),
    ]


def test_normalize_fence_after_blank_line_joins_preceding_paragraph() -> None:
    plan = normalize_plan("Run these:\n\n```\nmake a\n```\n\nThen these:\n\n~~~bash\nmake b\n~~~\n")
    assert [(p["id"], p["run"]) for p in plan.phases] == [
        ("run", ["make a"]),
        ("make-b", ["make b"]),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "# a" + " " * 20_000 + "b",
        "- run " + "[" * 20_000,
        "- run the tests\n" * 3_000,
        "```\n" + "echo x\n" * 20_000 + "```\n",
    ],
    ids=["heading-spaces", "brackets", "many-steps", "huge-fence"],
)
def test_normalize_pathological_input_stays_fast(text: str) -> None:
    start = time.monotonic()
    plan = normalize_plan(text)
    assert time.monotonic() - start < 5
    assert all(re.match(PHASE_ID_PATTERN, p["id"]) for p in plan.phases)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("run the tests", ["test"]),
        ("test", ["test"]),
        ("make sure tests pass", ["test"]),
        ("build", ["build"]),
        ("compile the project", ["build"]),
        ("install dependencies", ["install"]),
        ("lint", ["build"]),
        ("install deps, build and test", ["install", "build", "test"]),
        ("Build a login page", None),
        ("deploy to production", None),
    ],
)
def test_normalize_recognizes_validate_phrases(step: str, expected: list[str] | None) -> None:
    plan = normalize_plan(f"- {step}")
    assert (plan.phases[0]["steps"] if plan.phases else None) == expected
