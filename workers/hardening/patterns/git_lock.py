"""stale_git_index_lock: a crashed git left index.lock behind; remove it when no git still holds it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Final

from workers.hardening.base import FailureContext, MitigationResult, RetryOverrides
from workers.hardening.patterns.common import BasePattern, output_lines

_LOCK_EXISTS: Final = re.compile(r"Unable to create '(?P<path>[^']+\.lock)': File exists")
_SIGNS: Final = re.compile(r"index\.lock'?: File exists|Another git process seems to be running")
_GITDIR: Final = re.compile(r"^gitdir:\s*(?P<path>.+?)\s*$", re.MULTILINE)
# A lock younger than this may belong to a git that is still working.
STALE_AFTER_S = 5.0
PROC = Path("/proc")


def git_dir(worktree: Path) -> Path | None:
    """The worktree's git directory; for a linked worktree `.git` is a file naming it."""
    dotgit = worktree / ".git"
    if dotgit.is_dir():
        return dotgit.resolve()
    if not dotgit.is_file():
        return None
    match = _GITDIR.search(dotgit.read_text(encoding="utf-8", errors="replace"))
    if match is None:
        return None
    target = (
        worktree / match.group("path")
    ).resolve()  # relative paths are relative to the worktree
    return target if target.is_dir() else None


def git_processes_in(directories: list[Path]) -> list[int]:
    """Ids of running git processes whose cwd is inside one of the directories (Linux /proc)."""
    found = []
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().strip().startswith("git"):
                continue
            cwd = (entry / "cwd").resolve(strict=True)
        except (OSError, RuntimeError):
            continue  # gone meanwhile, or not ours to inspect
        if any(cwd.is_relative_to(directory) for directory in directories):
            found.append(int(entry.name))
    return found


class StaleGitIndexLock(BasePattern):
    """Removes the worktree's index.lock when it is stale, or retries shortly when a git still runs."""

    pattern_id = "stale_git_index_lock"
    name = "Stale git index.lock"
    priority = 20

    def _detect(self, ctx: FailureContext) -> bool:
        return any(_SIGNS.search(line) for line in output_lines(ctx))

    def _mitigate(self, ctx: FailureContext) -> MitigationResult:
        gitdir = git_dir(ctx.worktree)
        if gitdir is None:
            return MitigationResult(suggestions=["the worktree has no .git; cannot find its lock"])
        lock = gitdir / "index.lock"
        named = next(
            (m for line in reversed(output_lines(ctx)) if (m := _LOCK_EXISTS.search(line))), None
        )
        if named is not None and Path(named.group("path")).resolve() != lock:
            # another repository's lock (a submodule, a nested clone): not this worktree's to remove
            return MitigationResult(
                suggestions=[
                    f"{named.group('path')} is not this worktree's index.lock; not removed"
                ]
            )
        if lock.is_symlink() or not lock.is_file():
            return MitigationResult(
                actions_taken=[f"{lock} is already gone"], retry=RetryOverrides()
            )
        age = time.time() - lock.stat().st_mtime
        holders = git_processes_in([ctx.worktree.resolve(), gitdir])
        if holders and age < STALE_AFTER_S:
            return MitigationResult(
                actions_taken=[f"git process {holders[0]} may hold {lock}; retrying shortly"],
                retry=RetryOverrides(delay_s=STALE_AFTER_S),
            )
        try:
            lock.unlink()
        except FileNotFoundError:
            return MitigationResult(
                actions_taken=[f"{lock} was released meanwhile"], retry=RetryOverrides()
            )
        why = f"{age:.0f} s old" if holders else "no git process runs in the worktree"
        return MitigationResult(actions_taken=[f"removed stale {lock} ({why})"], changed=True)
