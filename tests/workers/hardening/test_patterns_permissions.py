"""permission_error on real denials: worktree files get the bit they need, nothing outside is touched."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from shared.failures import FailureClass
from workers.hardening.patterns.permissions import PermissionErrorPattern, wanted_mode
from workers.hardening.testing import init_repo, make_context, phase_env, retry_phase

PATTERN = PermissionErrorPattern()
SCRIPT = "#!/bin/sh\necho ran-it\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_make_script_executable_when_shell_cannot_run_it(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"scripts/run.sh": SCRIPT})  # committed without +x
    ctx = make_context("./scripts/run.sh", worktree=repo, env=phase_env(tmp_path / "home"))
    assert ctx.exit_code == 126 and ctx.failure.failure_class == FailureClass.ENVIRONMENT
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.changed
    assert result.actions_taken == ["chmod 0755 scripts/run.sh (made executable; was 0644)"]
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "ran-it" in retry.output


@pytest.mark.skipif(shutil.which("node") is None, reason="node needed")
def test_make_script_executable_when_node_spawn_is_denied(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"run.sh": SCRIPT})
    spawn = (
        "node -e \"const r = require('child_process').spawnSync('./run.sh', {stdio: 'inherit'});"
        ' if (r.error) throw r.error"'
    )
    ctx = make_context(spawn, worktree=repo, env=phase_env(tmp_path / "home"))
    assert "EACCES" in ctx.output and PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.changed and mode(repo / "run.sh") & stat.S_IXUSR
    assert "ran-it" in retry_phase(ctx, result, tmp_path / "retry.log").output


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only files")
def test_make_file_writable_when_redirect_is_denied(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"out/data.txt": "old\n"})
    (repo / "out" / "data.txt").chmod(0o444)
    ctx = make_context("echo new > out/data.txt", worktree=repo, env=phase_env(tmp_path / "home"))
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.changed and mode(repo / "out" / "data.txt") == 0o644
    assert retry_phase(ctx, result, tmp_path / "retry.log").ok


def test_make_file_writable_when_python_reports_errno_13(tmp_path: Path) -> None:
    # as root a real write is never denied, so the phase prints the denial Python would raise
    repo = init_repo(tmp_path / "repo", {"out/data.txt": "old\n"})
    (repo / "out" / "data.txt").chmod(0o444)
    command = (
        "echo \"PermissionError: [Errno 13] Permission denied: 'out/data.txt'\" >&2; "
        'test -w out/data.txt -a "$(id -u)" != 0'
    )
    ctx = make_context(command, worktree=repo, env=phase_env(tmp_path / "home"))
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.actions_taken == ["chmod 0644 out/data.txt (made writable; was 0444)"]
    assert mode(repo / "out" / "data.txt") == 0o644


def test_leave_symlink_target_outside_worktree_untouched(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "tool.sh"
    outside.parent.mkdir()
    outside.write_text(SCRIPT)
    outside.chmod(0o644)
    repo = init_repo(tmp_path / "repo", {"README.md": "x\n"})
    (repo / "tool.sh").symlink_to(outside)
    ctx = make_context("./tool.sh", worktree=repo, env=phase_env(tmp_path / "home"))
    assert ctx.exit_code == 126 and PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert not result.changed and "outside the worktree; not touched" in result.suggestions[0]
    assert mode(outside) == 0o644


def test_leave_parent_path_outside_worktree_untouched(tmp_path: Path) -> None:
    sibling = tmp_path / "sibling.sh"
    sibling.write_text(SCRIPT)
    sibling.chmod(0o644)
    repo = init_repo(tmp_path / "repo", {"README.md": "x\n"})
    ctx = make_context("../sibling.sh", worktree=repo, env=phase_env(tmp_path / "home"))
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert not result.changed and result.suggestions
    assert mode(sibling) == 0o644


def test_suggest_when_mode_already_allows_access(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"run.sh": SCRIPT})
    (repo / "run.sh").chmod(0o755)
    command = "echo 'bash: ./run.sh: Permission denied' >&2; exit 126"
    ctx = make_context(command, worktree=repo, env=phase_env(tmp_path / "home"))

    result = PATTERN.mitigate(ctx)

    assert not result.changed and "already has mode 0755" in result.suggestions[0]


def test_detect_nothing_without_a_denied_path(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"a": "x\n"})
    ctx = make_context("echo 'access refused' >&2; exit 1", worktree=repo, env=phase_env(tmp_path))

    assert not PATTERN.detect(ctx)


@pytest.mark.parametrize(
    ("before", "access", "is_dir", "after"),
    [
        (0o644, "exec", False, 0o755),
        (0o600, "exec", False, 0o700),
        (0o444, "write", False, 0o644),
        (0o555, "write", True, 0o755),
    ],
)
def test_compute_mode_like_chmod(before: int, access: str, is_dir: bool, after: int) -> None:
    assert wanted_mode(before, access, is_dir) == after
