"""A thin, safe wrapper over the git command line."""

from __future__ import annotations

import hashlib
import os
import re
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


_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


def read_loose_ref(common_dir: Path, refname: str) -> str | None:
    """The sha a loose ref file holds, read without starting git; None when git must answer.

    Only a plain `refs/...` name whose file holds a full sha is answered: a packed, symbolic or
    missing ref, or a name that could leave the refs folder, returns None, and the caller asks git.
    """
    if not refname.startswith("refs/") or ".." in refname.split("/") or "\\" in refname:
        return None
    try:
        content = (common_dir / refname).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return content if _FULL_SHA.match(content) else None


def read_worktree_head(worktree: Path) -> str | None:
    """The commit a linked worktree's HEAD names, read from its files; None when git must answer."""
    try:
        pointer = (worktree / ".git").read_text().strip()
        if not pointer.startswith("gitdir: "):
            return None
        admin = Path(pointer.removeprefix("gitdir: "))
        if not admin.is_absolute():
            admin = worktree / admin
        head = (admin / "HEAD").read_text().strip()
        if _FULL_SHA.match(head):  # detached
            return head
        if not head.startswith("ref: "):
            return None
        common = (admin / "commondir").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    common_dir = Path(common) if Path(common).is_absolute() else admin / common
    return read_loose_ref(common_dir, head.removeprefix("ref: "))


def local_refs_fingerprint(source: str) -> str | None:
    """A digest of the branches and tags of a repository on this host's disk; None when unsure.

    It changes whenever a ref a fetch of `refs/heads/*` and tags would bring changes: a loose
    ref's content, or the packed-refs file being rewritten (git replaces it by rename, so its
    inode, size or mtime change). None for anything but a plain local repository with the files
    ref store (a URL, a linked worktree, reftable) and while a ref update is in progress: the
    caller then fetches.
    """
    path = Path(source)
    if not path.is_absolute():
        return None
    git_dir = path / ".git" if (path / ".git").is_dir() else path
    if not (git_dir / "HEAD").is_file() or not (git_dir / "refs").is_dir():
        return None
    if (git_dir / "commondir").exists() or (git_dir / "reftable").exists():
        return None
    digest = hashlib.sha256(str(git_dir).encode())
    try:
        try:
            packed = (git_dir / "packed-refs").stat()
            digest.update(
                f"packed {packed.st_ino} {packed.st_size} {packed.st_mtime_ns}\n".encode()
            )
        except FileNotFoundError:
            digest.update(b"packed none\n")
        if (git_dir / "packed-refs.lock").exists():
            return None
        for namespace in ("heads", "tags"):
            root = git_dir / "refs" / namespace
            for folder, _dirs, files in sorted(os.walk(root)):
                for name in sorted(files):
                    if name.endswith(".lock"):
                        return None
                    file = Path(folder) / name
                    digest.update(f"{file.relative_to(git_dir)} ".encode())
                    digest.update(file.read_bytes())
    except OSError:
        return None
    return digest.hexdigest()
