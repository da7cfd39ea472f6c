"""permission_error: a file of the worktree lacks the permission the phase needs; grant it to the user."""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from workers.hardening.base import FailureContext, MitigationResult
from workers.hardening.patterns.common import BasePattern, inside, output_lines, relative

EXEC, WRITE = "exec", "write"
_PATH = r"(?P<path>[^'\"\s:][^'\":]*?)"
# (pattern, access needed); a None access is decided by the exit code (126: could not execute).
_DENIALS: Final[tuple[tuple[re.Pattern[str], str | None], ...]] = (
    (re.compile(rf"\bspawn(?:Sync)? {_PATH} EACCES\b"), EXEC),
    (re.compile(rf"EACCES: permission denied, \w+ '{_PATH}'"), WRITE),
    (re.compile(rf"\[Errno 13\] Permission denied: ['\"]{_PATH}['\"]"), WRITE),
    (re.compile(rf"cannot [\w ]+ '{_PATH}': Permission denied"), WRITE),
    (
        re.compile(rf"^(?:\S*/)?(?:ba|da|z)?sh: (?:line \d+: |\d+: )?{_PATH}: Permission denied$"),
        None,
    ),
    (re.compile(rf"['\"]{_PATH}['\"]: (?:\[Errno 13\] )?Permission denied"), None),
    (re.compile(rf"(?:^|\s){_PATH}: Permission denied$"), None),
)
EXEC_BITS = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
NOT_EXECUTABLE = 126


@dataclass(frozen=True)
class Denial:
    """A path the output says was denied, and whether it was to be executed or written."""

    path: str
    access: str


def find_denial(ctx: FailureContext) -> Denial | None:
    """The latest permission denial in the output that names a path."""
    for line in reversed(output_lines(ctx)):
        for pattern, access in _DENIALS:
            match = pattern.search(line)
            if match is None:
                continue
            path = match.group("path").strip()
            if access is None:
                access = EXEC if ctx.exit_code == NOT_EXECUTABLE else WRITE
            return Denial(path, access)
    return None


def wanted_mode(mode: int, access: str, is_dir: bool) -> int:
    """mode with what the user needs: read+exec to run (x wherever r is), read+write(+x on dirs) to write."""
    if is_dir:
        return mode | stat.S_IRWXU
    if access == EXEC:
        readable = mode | stat.S_IRUSR
        # like `chmod +x` under a usual umask: execute for whoever may read
        return readable | (EXEC_BITS & ((readable & 0o444) >> 2))
    return mode | stat.S_IRUSR | stat.S_IWUSR


class PermissionErrorPattern(BasePattern):
    """Makes a worktree file executable or user-writable; never touches anything outside the worktree."""

    pattern_id = "permission_error"
    name = "Permission denied on a worktree file"
    priority = 30

    def _detect(self, ctx: FailureContext) -> bool:
        return find_denial(ctx) is not None

    def _mitigate(self, ctx: FailureContext) -> MitigationResult:
        denial = find_denial(ctx)
        if denial is None:
            return MitigationResult()
        named = Path(denial.path).expanduser()
        target = inside(ctx.worktree, ctx.cwd / named)  # resolves symlinks and `..`
        if target is None:
            return MitigationResult(
                suggestions=[
                    f"{denial.path} is outside the worktree; not touched "
                    "(fix its permissions or use a path inside the worktree)"
                ]
            )
        if not target.exists():
            if denial.access == EXEC:
                return MitigationResult(suggestions=[f"{denial.path} does not exist"])
            target = target.parent  # creating a file needs a writable directory
        current = stat.S_IMODE(target.stat().st_mode)
        new = wanted_mode(current, denial.access, target.is_dir())
        shown = relative(ctx.worktree, target)
        if new == current:
            return MitigationResult(
                suggestions=[
                    f"{shown} already has mode {current:04o}; the denial comes from its owner, "
                    "an ACL or the mount (noexec, read-only)"
                ]
            )
        target.chmod(new)
        verb = (
            "made executable" if denial.access == EXEC and not target.is_dir() else "made writable"
        )
        return MitigationResult(
            actions_taken=[f"chmod {new:04o} {shown} ({verb}; was {current:04o})"], changed=True
        )
