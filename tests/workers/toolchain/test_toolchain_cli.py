"""Tests for the `toolchain detect` command through Typer's CliRunner."""

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.toolchain import app

runner = CliRunner()


def _repo(root: Path) -> Path:
    (root / "api").mkdir()
    (root / "api" / "pyproject.toml").write_text(
        '[project]\nname = "api"\nversion = "0.1.0"\n\n[tool.poetry]\nname = "api"\n',
        encoding="utf-8",
    )
    (root / "web").mkdir()
    (root / "web" / "package.json").write_text(
        json.dumps({"name": "web", "scripts": {"test": "jest"}}), encoding="utf-8"
    )
    (root / "web" / "pnpm-lock.yaml").write_text("lockfileVersion: '9.0'\n", encoding="utf-8")
    return root


def test_detect_prints_table_with_toolchains(tmp_path: Path) -> None:
    result = runner.invoke(app, ["detect", str(_repo(tmp_path))])
    assert result.exit_code == 0, result.output
    for text in ("python", "poetry", "node", "pnpm", "pnpm install --frozen-lockfile", "web"):
        assert text in result.output


def test_detect_wide_console_prints_one_column_per_field(tmp_path: Path) -> None:
    result = runner.invoke(app, ["detect", str(_repo(tmp_path))], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    for header in ("Package manager", "Confidence", "Reasons", "Install", "Build", "Test"):
        assert header in result.output
    assert "[tool.poetry] table in pyproject.toml" in result.output


def test_detect_json_flag_prints_parseable_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["detect", str(_repo(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["root"] == str(tmp_path.resolve())
    pairs = [(item["directory"], item["toolchain"]) for item in payload["detections"]]
    assert pairs == [("api", "python"), ("web", "node")]
    assert payload["detections"][1]["test"] == ["pnpm test"]


def test_detect_max_depth_zero_limits_scan(tmp_path: Path) -> None:
    result = runner.invoke(app, ["detect", str(_repo(tmp_path)), "--json", "--max-depth", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["detections"] == []


def test_detect_empty_directory_reports_nothing_found(tmp_path: Path) -> None:
    result = runner.invoke(app, ["detect", str(tmp_path)])
    assert result.exit_code == 0
    assert "No toolchain detected" in result.output


def test_detect_missing_path_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = runner.invoke(app, ["detect", str(missing)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {missing} does not exist"
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_detect_file_path_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "package.json"
    path.write_text("{}", encoding="utf-8")
    result = runner.invoke(app, ["detect", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {path} is not a directory"
