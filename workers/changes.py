"""What an attempt changed in the worktree since the last checkpoint, and how to undo parts of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workers.gitcmd import git


@dataclass(frozen=True)
class ChangedPath:
    """One path that differs from HEAD: its status letter (M, A, D, R, ?) and path."""

    status: str
    path: str

    @property
    def untracked(self) -> bool:
        """A file git does not know (created by the attempt)."""
        return self.status == "?"


@dataclass(frozen=True)
class TreeStatus:
    """A worktree against its HEAD: what changed, and whether any ignored file is there too."""

    changes: list[ChangedPath]
    ignored: bool

    @property
    def pristine(self) -> bool:
        """Nothing changed, nothing untracked or ignored: the files are exactly HEAD's (but for
        empty folders, which git never reports)."""
        return not self.changes and not self.ignored


def changed_paths(worktree: Path) -> list[ChangedPath]:
    """Every path the worktree changed against HEAD, untracked files included (ignored ones not)."""
    raw = git(["status", "--porcelain=v1", "-z", "--untracked-files=all"], cwd=worktree)
    return _parse_status(raw).changes


def tree_status(worktree: Path) -> TreeStatus:
    """changed_paths, and whether ignored files are present, from one `git status`; an ignored
    folder is reported as one entry, without listing what it holds."""
    raw = git(
        ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=matching"],
        cwd=worktree,
    )
    return _parse_status(raw)


def _parse_status(raw: str) -> TreeStatus:
    entries = raw.split("\0")
    changes: list[ChangedPath] = []
    ignored = False
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code == "!!":
            ignored = True
            continue
        if "R" in code or "C" in code:
            changes.append(ChangedPath("R", path))
            if i < len(entries) and entries[i]:
                changes.append(ChangedPath("D", entries[i]))  # the rename's source is gone
            i += 1
            continue
        letter = "?" if code == "??" else next((c for c in code if c != " "), "M")
        changes.append(ChangedPath(letter, path))
    return TreeStatus(changes, ignored)


def revert_paths(worktree: Path, paths: list[str]) -> list[str]:
    """Restore tracked paths to HEAD and delete untracked ones; returns what was reverted."""
    by_path = {c.path: c for c in changed_paths(worktree)}
    root = worktree.resolve()
    reverted = []
    for path in paths:
        change = by_path.get(path)
        if change is None:
            continue
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            continue
        if change.untracked or change.status == "A":
            if change.status == "A":
                git(["rm", "-q", "--cached", "--force", "--", path], cwd=worktree, check=False)
            if target.is_file() or target.is_symlink():
                target.unlink()
        else:
            git(["checkout", "-q", "HEAD", "--", path], cwd=worktree)
        reverted.append(path)
    return reverted
