"""`autopack patterns` over real failing runs: in-process through CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

import cli.patterns
from cli.common import console
from cli.patterns import app
from shared import repos
from shared.db import transaction
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from workers.executor import RunExecutor

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PROJECT = ROOT / "examples" / "demo" / "project"
OPEN_MISSING = "python3 -c \"import os; open('/tmp/x-' + os.urandom(4).hex())\""
# Runs `python -c` so the app is exercised as a real process before cli/main.py registers it.
PATTERNS_APP = [sys.executable, "-c", "from cli.patterns import app; app()"]


def make_origin(path: Path) -> Path:
    """A git repository with one committed file."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    path.mkdir(parents=True)
    (path / "src").mkdir()
    (path / "src" / "a.txt").write_text("a\n")
    (path / "README.md").write_text("readme\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    return path


@dataclass
class Runs:
    """The runs this module executed, and the window that holds exactly their failures."""

    started: datetime
    finished: datetime = field(default_factory=lambda: datetime.now(UTC))
    opens: list[str] = field(default_factory=list)
    command: str = ""
    scope: str = ""

    @property
    def window(self) -> list[str]:
        """--since/--until options selecting this module's failures only."""
        return ["--since", self.started.isoformat(), "--until", self.finished.isoformat()]


@pytest.fixture(scope="module")
def runs(
    settings: Settings, sessions: sessionmaker[Session], tmp_path_factory: pytest.TempPathFactory
) -> Runs:
    """Two runs missing a file (3 failures), one missing command, one caught scope violation."""
    origin = make_origin(tmp_path_factory.mktemp("patterns-cli") / "origin")
    repo = f"pcli-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, repo, str(origin))

    def execute(phases: list[dict[str, Any]]) -> str:
        spec = RunCreate.model_validate({"repo": repo, "goal": "make it pass", "phases": phases})
        with transaction(sessions) as session:
            run_id = service.submit(session, settings, spec).run.id
        RunExecutor(settings, sessions, "w").execute(run_id)
        return run_id

    result = Runs(started=datetime.now(UTC))
    result.opens.append(execute([{"id": "open", "run": OPEN_MISSING, "max_attempts": 2}]))
    result.opens.append(execute([{"id": "open", "run": OPEN_MISSING}]))
    result.command = execute([{"id": "cmd", "run": "nosuchcommand_xyz --flag"}])
    vandal = 'echo new > src/a.txt; if [ ! -e "$AUTOPACK_WORKTREE/../.tried-$AUTOPACK_RUN_ID" ]; then touch "$AUTOPACK_WORKTREE/../.tried-$AUTOPACK_RUN_ID"; echo vandal >> README.md; fi'
    result.scope = execute([{"id": "edit", "run": vandal, "scope": ["src/**"]}])
    result.finished = datetime.now(UTC)
    return result


@pytest.fixture
def invoke(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the Typer app in-process against the session database, on a wide console."""
    monkeypatch.setattr(cli.patterns, "load_settings", lambda: settings)
    monkeypatch.setattr(console, "width", 250)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(app, list(args))

    return run


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> None:
    """Exit 2 with a single stderr line containing every fragment, and no traceback."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    for fragment in fragments:
        assert fragment in stderr


def test_patterns_prints_table_and_top_sample(runs: Runs, invoke: Any) -> None:
    result = invoke(*runs.window)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    [open_row] = [line for line in lines if "file_not_found" in line and "│" in line]
    [command_row] = [line for line in lines if "command_not_found" in line and "│" in line]
    assert lines.index(open_row) < lines.index(command_row)
    assert "environment" in open_row and "medium" in open_row and "│     3 │" in open_row
    assert "low" in command_row and "cmd" in command_row
    assert "2 group(s), 4 uncaught failure(s)" in result.stdout
    assert "top sample (" in result.stdout and "FileNotFoundError: [Errno 2]" in result.stdout
    assert f"run {runs.opens[1]}" in result.stdout
    # the caught scope violation is not a candidate
    assert "scope_violation" not in result.stdout and runs.scope not in result.stdout


def test_patterns_narrow_console_gets_compact_table(
    runs: Runs, invoke: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "width", 100)
    result = invoke(*runs.window, "--min-count", "2")
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 100 for line in result.stdout.splitlines())
    header = next(line for line in result.stdout.splitlines() if "signature" in line)
    assert "conf." in header and "first seen" not in header and "phases" not in header
    [group_id] = [
        line.removeprefix("suggested id: ")
        for line in result.stdout.splitlines()
        if line.startswith("suggested id: ")
    ]
    assert group_id.startswith("file_not_found_")


def test_patterns_json_stdout_has_every_group_in_full(runs: Runs, invoke: Any) -> None:
    result = invoke(*runs.window, "--top", "1", "--json", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {
        "generated_at",
        "filters",
        "total_groups",
        "total_occurrences",
        "groups",
    }
    assert document["filters"] == {
        "run_id": None,
        "since": runs.started.isoformat(),
        "until": runs.finished.isoformat(),
        "min_count": 1,
    }
    assert (document["total_groups"], document["total_occurrences"]) == (2, 4)
    first, second = document["groups"]
    assert (first["error_type"], first["count"], first["confidence"]) == (
        "file_not_found",
        3,
        "medium",
    )
    assert first["run_ids"] == sorted(runs.opens) and first["phase_ids"] == ["open"]
    assert first["sample"]["run_id"] == runs.opens[1]
    assert first["suggested_pattern_id"].startswith("file_not_found_")
    assert (second["error_type"], second["run_ids"]) == ("command_not_found", [runs.command])
    assert all(runs.scope not in group["run_ids"] for group in document["groups"])


def test_patterns_json_file_written_alongside_report(
    runs: Runs, invoke: Any, tmp_path: Path
) -> None:
    target = tmp_path / "groups.json"
    result = invoke(*runs.window, "--json", str(target))
    assert result.exit_code == 0, result.output
    assert f"wrote 2 group(s) to {target}" in result.stdout and "file_not_found" in result.stdout
    assert [g["count"] for g in json.loads(target.read_text())["groups"]] == [3, 1]


def test_patterns_filters_by_run(runs: Runs, invoke: Any) -> None:
    result = invoke("--run", runs.command, "--json", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["filters"]["run_id"] == runs.command
    assert [(g["error_type"], g["count"]) for g in document["groups"]] == [("command_not_found", 1)]


def test_patterns_min_count_drops_rare_groups(runs: Runs, invoke: Any) -> None:
    result = invoke(*runs.window, "--min-count", "2", "--json", "-")
    assert result.exit_code == 0, result.output
    assert [g["error_type"] for g in json.loads(result.stdout)["groups"]] == ["file_not_found"]


def test_patterns_since_accepts_an_age(runs: Runs, invoke: Any) -> None:
    result = invoke("--since", "1h", "--json", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    seen = {run_id for group in document["groups"] for run_id in group["run_ids"]}
    assert {*runs.opens, runs.command} <= seen and runs.scope not in seen
    since = datetime.fromisoformat(document["filters"]["since"])
    assert timedelta(minutes=59) < datetime.now(UTC) - since < timedelta(minutes=61)


def test_patterns_reports_none_when_nothing_matches(runs: Runs, invoke: Any) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    result = invoke("--since", tomorrow)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no uncaught failures match the filters"
    assert invoke("--run", runs.scope).stdout.strip() == "no uncaught failures match the filters"


def test_patterns_scaffold_writes_then_keeps_pattern_files(
    runs: Runs, invoke: Any, tmp_path: Path
) -> None:
    target = tmp_path / "plugins"
    result = invoke(*runs.window, "--top", "1", "--scaffold", str(target))
    assert result.exit_code == 0, result.output
    files = sorted(path.name for path in target.iterdir())
    [module] = [name for name in files if name.startswith("file_not_found_")]
    assert files == sorted([module, f"test_{module}", "README.md", "pyproject-snippet.toml"])
    assert f"wrote {target / module}" in result.stdout
    again = invoke(*runs.window, "--top", "1", "--scaffold", str(target))
    assert again.exit_code == 0, again.output
    assert f"kept {target / module} (exists; not overwritten)" in again.stdout
    assert "wrote " not in again.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--min-count", "0"], "--min-count: must be at least 1, got 0"),
        (["--min-count", "many"], "--min-count: expected a whole number, got 'many'"),
        (["--top", "0"], "--top: must be at least 1"),
        (["--since", "yesterday"], "--since: expected an ISO 8601 time or an age"),
        (["--until", "2024-13-45"], "--until: expected an ISO 8601 time or an age"),
        (["--since", "1h", "--until", "2h"], "must be before --until"),
        (["--since", "999999999w"], "--since: '999999999w' reaches back before year 1"),
        (["--run", "run-does-not-exist"], "--run: run 'run-does-not-exist' not found"),
        (["--run", " "], "--run: give a run id"),
        (["--json", ""], "--json: give a file name"),
        (["--json", "/nonexistent-dir/x.json"], "directory '/nonexistent-dir' does not exist"),
    ],
)
def test_patterns_bad_option_exits_2_with_one_line(
    runs: Runs, invoke: Any, args: list[str], fragment: str
) -> None:
    result = invoke(*args)
    assert_one_line_error(result.exit_code, result.stderr, fragment)


def test_patterns_scaffold_onto_a_file_exits_2(invoke: Any, tmp_path: Path) -> None:
    occupied = tmp_path / "file"
    occupied.write_text("x")
    result = invoke("--scaffold", str(occupied))
    assert_one_line_error(result.exit_code, result.stderr, "is not a directory")


@pytest.fixture
def process_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI process on the session PostgreSQL database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTOPACK_") and k not in {"DATABASE_URL", "BROKER_URL"}
    }
    env.update(
        {
            "DATABASE_URL": settings.effective_database_url,
            "AUTOPACK_DATA_DIR": str(tmp_path / "data"),
            "COLUMNS": "200",
        }
    )
    return env


def run_process(
    command: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command from the project root, capturing its text output."""
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_patterns_process_prints_report(runs: Runs, process_env: dict[str, str]) -> None:
    result = run_process([*PATTERNS_APP, *runs.window], process_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Uncaught failure groups" in result.stdout
    assert "file_not_found" in result.stdout and "command_not_found" in result.stdout
    assert "top sample" in result.stdout and result.stderr == ""


def test_patterns_process_writes_json_to_stdout(runs: Runs, process_env: dict[str, str]) -> None:
    result = run_process([*PATTERNS_APP, "--run", runs.opens[0], "--json", "-"], process_env)
    assert result.returncode == 0, result.stdout + result.stderr
    [group] = json.loads(result.stdout)["groups"]
    assert (group["count"], group["run_ids"]) == (2, [runs.opens[0]])


def test_patterns_process_bad_value_exits_2_with_one_line(process_env: dict[str, str]) -> None:
    result = run_process([*PATTERNS_APP, "--since", "last tuesday"], process_env)
    assert_one_line_error(result.returncode, result.stderr, "--since")


def test_patterns_process_reads_the_embedded_database(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTOPACK_") and k not in {"DATABASE_URL", "BROKER_URL"}
    }
    env.update({"AUTOPACK_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"})
    empty = run_process(PATTERNS_APP, env)
    assert empty.returncode == 0, empty.stdout + empty.stderr
    assert empty.stdout.strip() == "no uncaught failures"
    run_file = tmp_path / "fail.yaml"
    run_file.write_text(
        "repo: demo\ngoal: fail\nphases:\n"
        "  - {id: cmd, run: 'nosuchcommand_xyz --flag', max_attempts: 2}\n"
    )
    failed = run_process(
        [sys.executable, "-m", "cli", "run", str(run_file), "--repo", f"demo={EXAMPLE_PROJECT}"],
        env,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    result = run_process([*PATTERNS_APP, "--json", "-"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    [group] = json.loads(result.stdout)["groups"]
    assert (group["error_type"], group["count"], group["phase_ids"]) == (
        "command_not_found",
        2,
        ["cmd"],
    )


def _registered() -> bool:
    """Whether cli/main.py has registered this app as `autopack patterns` yet."""
    from cli.main import app as main_app

    return any(group.name == "patterns" for group in main_app.registered_groups)


@pytest.mark.skipif(not _registered(), reason="cli/main.py does not register `patterns` yet")
def test_autopack_patterns_runs_through_the_main_command(
    runs: Runs, process_env: dict[str, str]
) -> None:
    result = run_process(
        [sys.executable, "-m", "cli", "patterns", *runs.window, "--json", "-"], process_env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["total_groups"] == 2
