"""Applying a unified diff to a worktree, only inside a phase's scope."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path, PurePosixPath

from shared.scope import outside_scope
from workers.gitcmd import GIT_ENV

_HEADER = re.compile(r"^(?:\+\+\+|---) (?:[ab]/)?(?P<path>[^\t\n]+)", re.M)
_GIT_HEADER = re.compile(r"^diff --git a/(?P<a>\S+) b/(?P<b>\S+)", re.M)


class PatchRejected(ValueError):
    """The patch touches paths it may not, or does not apply."""


def patch_paths(diff: str) -> list[str]:
    """Every path a unified diff reads or writes (excluding /dev/null)."""
    paths = {m.group("path").strip() for m in _HEADER.finditer(diff)}
    for match in _GIT_HEADER.finditer(diff):
        paths |= {match.group("a"), match.group("b")}
    paths.discard("/dev/null")
    return sorted(paths)


def check_patch_paths(diff: str, scope: list[str] | tuple[str, ...]) -> list[str]:
    """The patch's paths; PatchRejected when one escapes the worktree or the scope."""
    paths = patch_paths(diff)
    if not paths:
        raise PatchRejected("the patch names no files (is it a unified diff?)")
    for path in paths:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or path.startswith(".git/") or path == ".git":
            raise PatchRejected(f"the patch touches {path!r}, outside the worktree")
    outside = outside_scope(paths, list(scope))
    if outside:
        raise PatchRejected(
            f"the patch changes files outside the phase scope: {', '.join(outside)}"
        )
    return paths


def apply_patch(worktree: Path, diff: str, scope: list[str] | tuple[str, ...]) -> list[str]:
    """Check the paths, then `git apply --3way`; returns the paths changed."""
    paths = check_patch_paths(diff, scope)
    text = diff if diff.endswith("\n") else diff + "\n"
    for args in (["apply", "--check", "--3way"], ["apply", "--3way", "--whitespace=nowarn"]):
        completed = subprocess.run(
            ["git", *args],
            cwd=worktree,
            input=text,
            capture_output=True,
            text=True,
            env={**os.environ, **GIT_ENV},
            check=False,
        )
        if completed.returncode != 0:
            reason = completed.stderr.strip().splitlines()
            raise PatchRejected(
                f"the patch does not apply: {reason[-1] if reason else 'git apply failed'}"
            )
    return paths
