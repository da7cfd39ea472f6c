"""wrong_working_dir: a project manifest is missing in the phase's directory but exists elsewhere."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Final

from workers.hardening.base import FailureContext, MitigationResult, RetryOverrides
from workers.hardening.patterns.common import (
    BasePattern,
    output_lines,
    relative,
    walk_directories,
)

PROJECT_FILES: Final = (
    "package.json",
    "requirements.txt",
    "pyproject.toml",
    "Cargo.toml",
    "go.mod",
    "pom.xml",
    "setup.py",
    "build.gradle",
    "build.gradle.kts",
)
_FILE = "|".join(re.escape(name) for name in PROJECT_FILES)
_QUOTED = rf"""(?P<path>(?:[^'"`\s]*/)?(?:{_FILE}))"""
# Each pattern captures the missing manifest as the tool printed it (absolute, relative or bare).
_REFERENCES: Final = (
    re.compile(rf"ENOENT: no such file or directory, \w+ '{_QUOTED}'"),
    re.compile(rf"No such file or directory: ['\"]{_QUOTED}['\"]"),
    re.compile(rf"Could not read {_QUOTED}"),
    re.compile(rf"could not find [`'\"]?{_QUOTED}[`'\"]?"),
    re.compile(rf"(?:^|\s)(?:go: )?{_QUOTED} file not found"),
    re.compile(rf"(?:^|[\s:'\"]){_QUOTED}['\"]?: No such file or directory"),
    re.compile(rf"(?:^|[\s:'\"]){_QUOTED}['\"]?: (?:not found|does not exist)"),
)
# Tools that name what they miss in words rather than by file name.
_PHRASES: Final = (
    (re.compile(r"there is no POM in this directory"), ("pom.xml",)),
    (
        re.compile(r"Neither 'setup\.py' nor 'pyproject\.toml' found"),
        ("setup.py", "pyproject.toml"),
    ),
    (re.compile(r"does not contain a Gradle build"), ("build.gradle", "build.gradle.kts")),
)
MAX_LISTED = 5


def missing_manifests(ctx: FailureContext) -> tuple[str, ...]:
    """The manifest path(s) the output says are missing, relative to the phase's directory."""
    for line in reversed(output_lines(ctx)):
        for pattern in _REFERENCES:
            match = pattern.search(line)
            if match is not None:
                path = PurePosixPath(match.group("path"))
                # an absolute path names the directory the tool looked in; only the file matters
                return (path.name if path.is_absolute() else path.as_posix(),)
        for phrase, names in _PHRASES:
            if phrase.search(line):
                return names
    return ()


def candidate_directories(ctx: FailureContext, names: tuple[str, ...]) -> list[Path]:
    """Directories of the worktree (vendored and hidden ones skipped) holding one of the names."""
    cwd = ctx.cwd.resolve()
    found = []
    for directory in walk_directories(ctx.worktree.resolve()):
        if directory != cwd and any((directory / name).is_file() for name in names):
            found.append(directory)
    return found


class WrongWorkingDir(BasePattern):
    """Retries the phase in the one directory of the worktree that has the manifest it looked for."""

    pattern_id = "wrong_working_dir"
    name = "Phase ran in the wrong directory"
    priority = 40

    def _detect(self, ctx: FailureContext) -> bool:
        names = missing_manifests(ctx)
        # present in the phase's directory: the tool failed for another reason
        return bool(names) and not any((ctx.cwd / name).exists() for name in names)

    def _mitigate(self, ctx: FailureContext) -> MitigationResult:
        names = missing_manifests(ctx)
        wanted = " or ".join(names)
        candidates = [relative(ctx.worktree, d) for d in candidate_directories(ctx, names)]
        if not candidates:
            return MitigationResult(
                suggestions=[f"{wanted} exists nowhere in the worktree; create it or fix the path"]
            )
        if len(candidates) > 1:
            listed = ", ".join(candidates[:MAX_LISTED])
            more = (
                f" and {len(candidates) - MAX_LISTED} more" if len(candidates) > MAX_LISTED else ""
            )
            return MitigationResult(
                suggestions=[
                    f"{wanted} exists in several directories ({listed}{more}); "
                    "set the phase's cwd to the right one"
                ]
            )
        target = candidates[0]
        return MitigationResult(
            actions_taken=[f"retry in {target} ({wanted} is there)"],
            changed=True,
            retry=RetryOverrides(cwd=target),
        )
