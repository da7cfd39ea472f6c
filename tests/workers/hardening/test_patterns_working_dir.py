"""wrong_working_dir with real tools run from the wrong directory of a real repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from workers.hardening.patterns.working_dir import WrongWorkingDir
from workers.hardening.testing import init_repo, make_context, phase_env, retry_phase

PATTERN = WrongWorkingDir()
READ_PYPROJECT = (
    "python3 -c \"import tomllib; print('project', tomllib.load(open('pyproject.toml', 'rb'))"
    "['project']['name'])\""
)
PYPROJECT = '[project]\nname = "service"\nversion = "0.1"\n'


def test_retry_in_only_directory_with_manifest_when_python_reads_it(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"service/pyproject.toml": PYPROJECT, "README.md": "x\n"})
    ctx = make_context(READ_PYPROJECT, worktree=repo, env=phase_env(tmp_path / "home"))
    assert ctx.exit_code == 1 and PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.changed and result.retry is not None and result.retry.cwd == "service"
    assert result.actions_taken[0].startswith("retry in service")
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "project service" in retry.output


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm needed")
def test_retry_in_package_directory_when_npm_runs_at_root(tmp_path: Path) -> None:
    files = {
        "web/package.json": '{"name": "web", "scripts": {"test": "node -e \\"console.log(\'web ok\')\\""}}',
        # vendored manifests never count as candidates
        "node_modules/left-pad/package.json": '{"name": "left-pad"}',
        ".cache/package.json": "{}",
    }
    repo = init_repo(tmp_path / "repo", files)
    env = phase_env(tmp_path / "home", npm_config_cache=str(tmp_path / "npm-cache"))
    ctx = make_context("npm test", worktree=repo, env=env)
    assert "ENOENT" in ctx.output and PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.retry is not None and result.retry.cwd == "web"
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "web ok" in retry.output


@pytest.mark.skipif(shutil.which("cargo") is None, reason="cargo needed")
def test_retry_in_crate_directory_when_cargo_misses_manifest(tmp_path: Path) -> None:
    files = {
        "crates/tool/Cargo.toml": '[package]\nname = "tool"\nversion = "0.1.0"\nedition = "2021"\n',
        "crates/tool/src/main.rs": "fn main() {}\n",
    }
    repo = init_repo(tmp_path / "repo", files)
    rustup_home = os.environ.get("RUSTUP_HOME", str(Path.home() / ".rustup"))
    env = phase_env(tmp_path / "home", CARGO_HOME=str(tmp_path / "cargo"), RUSTUP_HOME=rustup_home)
    env["PATH"] = f"{Path(shutil.which('cargo') or '').parent}:{env['PATH']}"
    if subprocess.run(["cargo", "--version"], env=env, capture_output=True).returncode != 0:
        pytest.skip("cargo has no usable toolchain")
    command = "cargo metadata --offline --no-deps --format-version 1 > /dev/null && echo crate ok"
    ctx = make_context(command, worktree=repo, env=env)
    assert PATTERN.detect(ctx), ctx.output

    result = PATTERN.mitigate(ctx)

    assert result.retry is not None and result.retry.cwd == "crates/tool"
    assert retry_phase(ctx, result, tmp_path / "retry.log").ok


def test_suggest_candidates_when_several_directories_have_manifest(tmp_path: Path) -> None:
    files = {"api/pyproject.toml": PYPROJECT, "worker/pyproject.toml": PYPROJECT}
    repo = init_repo(tmp_path / "repo", files)
    ctx = make_context(READ_PYPROJECT, worktree=repo, env=phase_env(tmp_path / "home"))
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert not result.changed and result.retry is None
    assert "api, worker" in result.suggestions[0]


def test_suggest_creating_manifest_when_worktree_has_none(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"README.md": "x\n"})
    ctx = make_context(READ_PYPROJECT, worktree=repo, env=phase_env(tmp_path / "home"))

    result = PATTERN.mitigate(ctx)

    assert not result.changed and "exists nowhere in the worktree" in result.suggestions[0]


def test_detect_nothing_when_manifest_is_in_phase_directory(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"requirements.txt": "x\n", "sub/requirements.txt": "y\n"})
    ctx = make_context(
        "cat requirements.txt; cat missing.txt", worktree=repo, env=phase_env(tmp_path / "home")
    )

    assert not PATTERN.detect(ctx)


def test_retry_from_subdirectory_in_ancestor_with_manifest(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"pyproject.toml": PYPROJECT, "src/app/x.py": ""})
    ctx = make_context(
        READ_PYPROJECT, worktree=repo, cwd=repo / "src", env=phase_env(tmp_path / "home")
    )

    result = PATTERN.mitigate(ctx)

    assert result.retry is not None and result.retry.cwd == "."
    assert retry_phase(ctx, result, tmp_path / "retry.log").ok
