"""The `autopack` command line, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from shared.migrations import head_revision
from shared.settings import Settings
from tests.conftest import PG_ADMIN
from tests.services import Service, service_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "demo"


def autopack(
    *args: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    """No services at all: the embedded SQLite default in a fresh data directory."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTOPACK_") and k not in {"DATABASE_URL", "BROKER_URL"}
    }
    env.update({"AUTOPACK_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"})
    return env


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_run_example_embedded_succeeds(embedded_env: dict[str, str]) -> None:
    result = autopack(
        "run", "examples/demo/run.yaml", "--repo", "demo=examples/demo/project", env=embedded_env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "status: succeeded" in result.stdout
    assert "changelog" in result.stdout and "test" in result.stdout
    assert "result commit: " in result.stdout and "result commit: -" not in result.stdout
    assert (Path(embedded_env["AUTOPACK_DATA_DIR"]) / "autopack.db").exists()


def test_run_failing_phase_exits_1(embedded_env: dict[str, str], tmp_path: Path) -> None:
    run_file = tmp_path / "fail.yaml"
    run_file.write_text(
        "repo: demo\ngoal: fail\nphases:\n  - {id: ok, run: 'true'}\n  - {id: bad, run: 'exit 9'}\n"
    )
    result = autopack(
        "run", str(run_file), "--repo", f"demo={EXAMPLE / 'project'}", env=embedded_env
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "status: failed" in result.stdout and "exit code 9" in result.stdout


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("repo: [demo\n", ("not valid YAML",)),
        ("repo: demo\ngoal: g\nphases: []\n", ("phases:",)),
        (
            "repo: demo\ngoal: g\ncolour: red\nphases: [{id: a, run: 'true'}]\n",
            ("colour: Extra inputs are not permitted",),
        ),
        (
            "repo: demo\ngoal: g\nphases: [{id: a, run: 'true'}, {id: a, run: 'true'}]\n",
            ("duplicate phase id 'a'",),
        ),
        ("repo: demo\ngoal: g\nphases: [{id: a, run: 'true', cwd: ../x}]\n", ("phases[0].cwd",)),
        (
            "repo: unknown\ngoal: g\nphases: [{id: a, run: 'true'}]\n",
            ("repository 'unknown' is not registered", "--repo unknown="),
        ),
        ("- just\n- a list\n", ("must be a mapping",)),
    ],
)
def test_run_bad_input_exits_2_with_one_line(
    embedded_env: dict[str, str], tmp_path: Path, content: str, fragments: tuple[str, ...]
) -> None:
    run_file = tmp_path / "bad.yaml"
    run_file.write_text(content)
    assert_one_line_error(autopack("run", str(run_file), env=embedded_env), *fragments)


def test_run_missing_file_exits_2(embedded_env: dict[str, str]) -> None:
    assert_one_line_error(autopack("run", "nope.yaml", env=embedded_env), "does not exist")


def test_services_refuse_unmigrated_database(embedded_env: dict[str, str]) -> None:
    name = f"autopack_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {
            **embedded_env,
            "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        }
        for command in ("api", "worker"):
            assert_one_line_error(autopack(command, env=env, timeout=60), "autopack db upgrade")
        upgraded = autopack("db", "upgrade", env=env)
        assert upgraded.returncode == 0 and "database at revision" in upgraded.stdout
        head = head_revision(Settings())
        assert f"current: {head}  head: {head}" in autopack("db", "current", env=env).stdout
        rebuilt = autopack("db", "rebuild-rollups", env=env)
        assert rebuilt.returncode == 0 and "llm_usage_hourly: 0 row(s)" in rebuilt.stdout
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_keys_and_repos_commands(embedded_env: dict[str, str], tmp_path: Path) -> None:
    created = autopack("keys", "create", "--name", "ci", env=embedded_env)
    assert created.returncode == 0 and created.stdout.strip().splitlines()[-1].startswith("ap_")
    assert "ci" in autopack("keys", "list", env=embedded_env).stdout
    assert (
        autopack("repos", "add", "demo", str(EXAMPLE / "project"), env=embedded_env).returncode == 0
    )
    assert "demo" in autopack("repos", "list", env=embedded_env).stdout
    assert_one_line_error(
        autopack("repos", "add", "demo", str(tmp_path), env=embedded_env), "already registered"
    )
    assert_one_line_error(
        autopack("repos", "add", "other", str(tmp_path / "missing"), env=embedded_env),
        "not a directory",
    )
    assert_one_line_error(autopack("keys", "revoke", "999", env=embedded_env), "not found")
    # A repository registered once is found by later runs without --repo.
    assert autopack("run", "examples/demo/run.yaml", env=embedded_env).returncode == 0


@pytest.mark.e2e
def test_submit_wait_status_and_runs_against_real_api(
    settings: Settings,
    api_url: str,
    api_key: str,
    worker: Service,
    register_repo: Callable[..., str],
    tmp_path: Path,
) -> None:
    repo = register_repo()
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        f"repo: {repo}\ngoal: via the CLI\nphases:\n  - {{id: hello, run: 'echo hello > hello.txt'}}\n"
    )
    env = {
        **service_env(settings),
        "AUTOPACK_API_URL": api_url,
        "AUTOPACK_API_KEY": api_key,
        "COLUMNS": "200",
    }
    submitted = autopack("submit", str(run_file), "--wait", "--timeout", "90", env=env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "status: succeeded" in submitted.stdout
    run_id = submitted.stdout.split("submitted run ", 1)[1].split()[0]
    assert "succeeded" in autopack("status", run_id, env=env).stdout
    assert run_id in autopack("runs", "--repo", repo, env=env).stdout
    unauthorized = autopack("runs", env={**env, "AUTOPACK_API_KEY": "ap_bad"})
    assert_one_line_error(unauthorized, "unauthorized")


def test_run_plan_example_embedded_succeeds(embedded_env: dict[str, str]) -> None:
    result = autopack(
        "run", "examples/demo/plan.yaml", "--repo", "demo=examples/demo/project", env=embedded_env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "record-changelog-entry" in result.stdout and "run-test-suite" in result.stdout
    assert "status: succeeded" in result.stdout
    preview = autopack(
        "plan",
        "normalize",
        "examples/demo/plan.yaml",
        "--repo",
        "examples/demo/project",
        "--json",
        env=embedded_env,
    )
    assert preview.returncode == 0 and '"confidence": 1.0' in preview.stdout
