"""stale_git_index_lock with real git: stale locks go, locks a live git may hold stay."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.failures import FailureClass
from workers.hardening.patterns.git_lock import StaleGitIndexLock, git_dir
from workers.hardening.testing import init_repo, make_context, phase_env, retry_phase

PATTERN = StaleGitIndexLock()
STAGE = "echo change >> a.txt && git add a.txt && echo staged"


@pytest.fixture
def live_git(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """git processes a test starts (blocked reading stdin); stopped by their own pids afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(timeout=10)


def start_git_in(directory: Path, started: list[subprocess.Popen[bytes]]) -> None:
    """Start a git that waits on stdin in directory; return once it runs as git (Popen may return before exec)."""
    process = subprocess.Popen(
        ["git", "hash-object", "--stdin"], cwd=directory, stdin=subprocess.PIPE
    )
    started.append(process)
    comm = Path(f"/proc/{process.pid}/comm")
    deadline = time.monotonic() + 10
    while comm.read_text().strip() != "git":
        assert time.monotonic() < deadline, "git did not start"
        time.sleep(0.01)


def test_remove_stale_lock_when_no_git_runs(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"a.txt": "a\n"})
    (repo / ".git" / "index.lock").write_text("")
    ctx = make_context(STAGE, worktree=repo, env=phase_env(tmp_path / "home"))
    assert ctx.exit_code == 128 and ctx.failure.failure_class == FailureClass.INFRASTRUCTURE
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.changed and "no git process runs in the worktree" in result.actions_taken[0]
    assert not (repo / ".git" / "index.lock").exists()
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and "staged" in retry.output


def test_remove_lock_of_linked_worktree_in_its_gitdir(tmp_path: Path) -> None:
    main = init_repo(tmp_path / "main", {"a.txt": "a\n"})
    linked = tmp_path / "linked"
    subprocess.run(["git", "worktree", "add", "-q", str(linked)], cwd=main, check=True)
    gitdir = git_dir(linked)
    assert gitdir is not None and gitdir.parent == (main / ".git" / "worktrees").resolve()
    (gitdir / "index.lock").write_text("")
    ctx = make_context(STAGE, worktree=linked, env=phase_env(tmp_path / "home"))
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.changed and not (gitdir / "index.lock").exists()
    assert retry_phase(ctx, result, tmp_path / "retry.log").ok


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_keep_young_lock_when_git_runs_in_worktree(
    tmp_path: Path, live_git: list[subprocess.Popen[bytes]]
) -> None:
    repo = init_repo(tmp_path / "repo", {"a.txt": "a\n"})
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    ctx = make_context(STAGE, worktree=repo, env=phase_env(tmp_path / "home"))
    start_git_in(repo, live_git)

    result = PATTERN.mitigate(ctx)

    assert lock.exists() and not result.changed
    assert result.retry is not None and result.retry.delay_s > 0
    assert f"git process {live_git[0].pid} may hold" in result.actions_taken[0]


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_remove_old_lock_even_when_git_runs_in_worktree(
    tmp_path: Path, live_git: list[subprocess.Popen[bytes]]
) -> None:
    repo = init_repo(tmp_path / "repo", {"a.txt": "a\n"})
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    ctx = make_context(STAGE, worktree=repo, env=phase_env(tmp_path / "home"))
    start_git_in(repo, live_git)

    result = PATTERN.mitigate(ctx)

    assert result.changed and not lock.exists()
    assert "3600 s old" in result.actions_taken[0]


def test_keep_lock_of_another_repository(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"a.txt": "a\n"})
    other = init_repo(tmp_path / "other", {"b.txt": "b\n"})
    (other / ".git" / "index.lock").write_text("")
    command = f"echo x >> {other}/b.txt && git -C {other} add b.txt"
    ctx = make_context(command, worktree=repo, env=phase_env(tmp_path / "home"))
    assert PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert not result.changed and result.retry is None
    assert "not this worktree's index.lock" in result.suggestions[0]
    assert (other / ".git" / "index.lock").exists()


def test_detect_nothing_for_other_git_errors(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"a.txt": "a\n"})
    ctx = make_context("git checkout no-such-branch", worktree=repo, env=phase_env(tmp_path))

    assert ctx.exit_code != 0 and not PATTERN.detect(ctx)
