"""scope_mismatch in a real git worktree: out-of-scope changes are reverted, in-scope work is kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

from shared.failures import FailureClass
from workers.hardening.patterns.scope import ScopeMismatch
from workers.hardening.testing import (
    init_repo,
    make_context,
    phase_env,
    retry_phase,
    scope_violations,
)

PATTERN = ScopeMismatch()
SCOPE = ("src/**",)


def test_revert_out_of_scope_changes_and_keep_in_scope_work(tmp_path: Path) -> None:
    files = {"src/a.txt": "old\n", "README.md": "readme\n", "docs/guide.md": "guide\n"}
    repo = init_repo(tmp_path / "repo", files)
    # vandalizes only on its first run, like an agent that learns from the failed attempt
    command = (
        "echo new > src/a.txt; echo extra > src/b.txt; "
        "if [ ! -e ../tried ]; then touch ../tried; echo vandal >> README.md; "
        "rm docs/guide.md; echo scratch > notes.tmp; fi"
    )
    ctx = make_context(command, worktree=repo, scope=SCOPE, env=phase_env(tmp_path / "home"))
    assert ctx.outside_scope == ("README.md", "docs/guide.md", "notes.tmp")
    assert ctx.failure.failure_class == FailureClass.SCOPE and PATTERN.detect(ctx)

    result = PATTERN.mitigate(ctx)

    assert result.changed and result.actions_taken == [
        "reverted README.md (outside scope)",
        "reverted docs/guide.md (outside scope)",
        "reverted notes.tmp (outside scope)",
        "kept 2 in-scope change(s)",
    ]
    assert (repo / "README.md").read_text() == "readme\n"
    assert (repo / "docs/guide.md").read_text() == "guide\n"
    assert not (repo / "notes.tmp").exists()
    assert (repo / "src/a.txt").read_text() == "new\n" and (repo / "src/b.txt").exists()
    retry = retry_phase(ctx, result, tmp_path / "retry.log")
    assert retry.ok and scope_violations(repo, SCOPE) == []


def test_revert_staged_rename_out_of_scope(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"src/a.txt": "a\n"})
    ctx = make_context(
        "git mv src/a.txt moved.txt", worktree=repo, scope=SCOPE, env=phase_env(tmp_path / "home")
    )
    assert ctx.outside_scope == ("moved.txt",)

    result = PATTERN.mitigate(ctx)

    assert result.changed and not (repo / "moved.txt").exists()
    assert scope_violations(repo, SCOPE) == []
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert "moved.txt" not in status.stdout


def test_detect_nothing_when_changes_stay_in_scope(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"src/a.txt": "old\n", "README.md": "r\n"})
    ctx = make_context(
        "echo new > src/a.txt; exit 1", worktree=repo, scope=SCOPE, env=phase_env(tmp_path)
    )

    assert ctx.outside_scope == () and not PATTERN.detect(ctx)


def test_suggest_scope_when_paths_are_already_reverted(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"src/a.txt": "old\n", "README.md": "r\n"})
    ctx = make_context("echo x >> README.md", worktree=repo, scope=SCOPE, env=phase_env(tmp_path))
    subprocess.run(["git", "checkout", "--", "README.md"], cwd=repo, check=True)

    result = PATTERN.mitigate(ctx)

    assert not result.changed and "within its scope: src/**" in result.suggestions[0]


def test_list_builtin_patterns_in_priority_order() -> None:
    from workers.hardening.patterns import BUILTIN_PATTERNS

    assert [p.pattern_id for p in BUILTIN_PATTERNS] == [
        "scope_mismatch",
        "stale_git_index_lock",
        "permission_error",
        "wrong_working_dir",
        "transient_network",
        "python_missing_dep",
        "node_missing_dep",
        "missing_test_discovery",
    ]
    assert [p.priority for p in BUILTIN_PATTERNS] == sorted({p.priority for p in BUILTIN_PATTERNS})
