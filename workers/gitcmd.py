"""A thin, safe wrapper over the git command line."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from shared.errors import Permanent

GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",  # never wait for a password on a worker
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}


class GitError(Permanent):
    """A git command failed; the message carries its stderr."""


def git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    git_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
    allow_failure: bool = False,
) -> str:
    """Run git and return stdout; raise GitError with stderr when it fails.

    With allow_failure, return "ok" or "failed" instead of stdout (for existence checks).
    """
    command = ["git"]
    if git_dir is not None:
        command.append(f"--git-dir={git_dir}")
    command.extend(args)
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    completed = subprocess.run(
        command,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if allow_failure:
        return "ok" if completed.returncode == 0 else "failed"
    if check and completed.returncode != 0:
        raise GitError(f"git {' '.join(args[:2])} failed: {completed.stderr.strip()[-2000:]}")
    return completed.stdout
