"""Tests for `plan normalize` through Typer's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.plan import app

runner = CliRunner()

PLAN = "# Plan\n\n1. install the project  2. run the web tests\n3. `make lint` on src/\n"


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.md"
    path.write_text(PLAN + "\n## Deliverables\n- docs/guide.md\n", encoding="utf-8")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A root Python project with a node frontend in web/."""
    root = tmp_path / "repo"
    (root / "web").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "app"\nversion = "0.1.0"\n')
    (root / "web" / "package.json").write_text(json.dumps({"scripts": {"test": "jest"}}))
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("x = 1\n")
    return root


def test_normalize_prints_table_and_summary(plan_file: Path) -> None:
    result = runner.invoke(app, ["normalize", str(plan_file)])
    assert result.exit_code == 0, result.output
    for text in ("Phases", "install", "run-web-tests", "validate", "make lint", "src/**"):
        assert text in result.stdout
    assert "confidence: 0.73" in result.stdout
    assert "no toolchain detection" in result.stdout
    assert "docs/guide.md" in result.stdout
    assert "verdict (min confidence 0.50): would run" in result.stdout


def test_normalize_json_flag_prints_parseable_json(plan_file: Path) -> None:
    result = runner.invoke(app, ["normalize", str(plan_file), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [p["id"] for p in payload["phases"]] == ["install", "run-web-tests", "make-lint-src"]
    assert payload["deliverables"] == ["docs/guide.md"]
    assert set(payload) == {
        "phases",
        "confidence",
        "warnings",
        "decisions",
        "deliverables",
        "scope_size_bytes",
    }


def test_normalize_repo_option_enables_detection(plan_file: Path, repo: Path) -> None:
    plain = json.loads(runner.invoke(app, ["normalize", str(plan_file), "--json"]).stdout)
    result = runner.invoke(app, ["normalize", str(plan_file), "--json", "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    detected = json.loads(result.stdout)
    assert detected["confidence"] > plain["confidence"]
    assert [p.get("cwd") for p in detected["phases"]] == [None, "web", None]
    assert detected["scope_size_bytes"] == len("x = 1\n")
    assert plain["scope_size_bytes"] == 0


def test_normalize_repo_option_shows_cwd_in_table(plan_file: Path, repo: Path) -> None:
    result = runner.invoke(app, ["normalize", str(plan_file), "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    assert "node in web" in result.stdout
    assert "warnings: none" in result.stdout


def test_normalize_vague_plan_shows_refusal(tmp_path: Path) -> None:
    path = tmp_path / "vague.txt"
    path.write_text("think about the architecture\n", encoding="utf-8")
    result = runner.invoke(app, ["normalize", str(path)])
    assert result.exit_code == 0, result.output
    assert "No phases." in result.stdout
    assert "would be refused" in result.stdout


@pytest.mark.parametrize(
    ("make_path", "fragment"),
    [
        (lambda tmp: tmp / "missing.md", "does not exist"),
        (lambda tmp: tmp, "is not a file"),
    ],
    ids=["missing", "directory"],
)
def test_normalize_bad_file_exits_2_with_one_line(
    tmp_path: Path, make_path: Callable[[Path], Path], fragment: str
) -> None:
    result = runner.invoke(app, ["normalize", str(make_path(tmp_path))])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_normalize_non_utf8_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "plan.md"
    path.write_bytes(b"\xff\xfe- run the tests\x80\n")
    result = runner.invoke(app, ["normalize", str(path)])
    assert result.exit_code == 2
    assert "cannot read the plan" in result.stderr


def test_normalize_bad_repo_exits_2(plan_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["normalize", str(plan_file), "--repo", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "is not a directory" in result.stderr
