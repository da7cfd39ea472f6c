"""Per-host bare mirrors and per-run git worktrees under the data directory."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.constants import (
    CHECKPOINT_AUTHOR_EMAIL,
    CHECKPOINT_AUTHOR_NAME,
    checkpoint_ref,
    run_branch,
)
from shared.settings import Settings
from workers.gitcmd import (
    GitError,
    git,
    local_refs_fingerprint,
    read_loose_ref,
    read_worktree_head,
)

logger = logging.getLogger(__name__)

_SHA_RE = re.compile(r"^[0-9a-fA-F]{7,40}$")
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
NULL_SHA = "0" * 40
_BAD_WORKTREE_HEAD = re.compile(r"bad object worktrees/([A-Za-z0-9._-]+)/HEAD")
SNAPSHOT_BRANCH = "main"
# When the last completed fetch started, and the local origin's refs fingerprint taken then.
FETCH_STATE_FILE = "autopack-last-fetch.json"


class Workspaces:
    """Mirrors, worktrees and checkpoints for the runs executed on this host."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.data_dir
        self.mirrors = self.root / "mirrors"
        self.worktrees = self.root / "worktrees"
        self.locks = self.root / "locks"
        for folder in (self.mirrors, self.worktrees, self.locks):
            folder.mkdir(parents=True, exist_ok=True)

    def mirror_path(self, repo: str) -> Path:
        """The bare mirror of a registered repository."""
        return self.mirrors / f"{repo}.git"

    def worktree_path(self, run_id: str) -> Path:
        """The worktree a run executes in."""
        return self.worktrees / run_id

    def spare_path(self, repo: str) -> Path:
        """A checkout of the repository made ahead of its next run (see prepare_spare)."""
        return self.root / "spares" / repo

    @contextmanager
    def locked(self, repo: str) -> Iterator[None]:
        """Serialize mirror updates and worktree bookkeeping across processes on this host."""
        with (self.locks / f"{repo}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def sync_mirror(
        self, repo: str, source: str, *, want: str | None = None, since: float | None = None
    ) -> Path:
        """Clone the mirror once, then fetch; a plain directory is imported as a snapshot commit.

        No fetch is needed, and none is made, when it cannot bring anything the caller needs:
        `want` is a full commit id the mirror already holds; the origin is a repository on this
        host whose branches and tags are as they were before the last fetch
        (`local_refs_fingerprint`); or a fetch that started at or after `since` (epoch seconds:
        when the caller's run started) has completed while the caller waited for the mirror's
        lock, so runs arriving together on one host share a fetch.
        """
        mirror = self.mirror_path(repo)
        wanted_present = (
            want is not None
            and _FULL_SHA.match(want) is not None
            and mirror.exists()
            and self._is_commit(mirror, want)
        )
        if wanted_present:
            return mirror
        with self.locked(repo):
            source_path = Path(source)
            is_plain_dir = source_path.is_dir() and not _is_git_repository(source_path)
            if not mirror.exists():
                tmp = mirror.with_suffix(".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                git(["init", "--bare", "-q", str(tmp)])
                if not is_plain_dir:
                    git(["remote", "add", "origin", "--", source], git_dir=tmp)
                    git(
                        ["config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"],
                        git_dir=tmp,
                    )
                tmp.rename(mirror)
            self._write_excludes(mirror)
            if is_plain_dir:
                self._snapshot(mirror, source_path)
            else:
                self._fetch(mirror, source, since)
        return mirror

    def _fetch(self, mirror: Path, source: str, since: float | None) -> None:
        """Fetch the origin (lock held) unless the last fetch already serves (see sync_mirror).

        The origin's fingerprint and the start time are taken before fetching, so a ref moved
        during the fetch leaves a stale fingerprint (the next sync fetches again) and a run that
        started during it does not count it as its own. A worktree left half-made by a killed
        worker is repaired and the fetch made again.
        """
        state_file = mirror / FETCH_STATE_FILE
        last = _read_fetch_state(state_file)
        fingerprint = local_refs_fingerprint(source)
        if fingerprint is not None and last.get("fingerprint") == fingerprint:
            return
        started = last.get("started")
        if since is not None and isinstance(started, float) and started >= since:
            return
        state_file.unlink(missing_ok=True)
        now = time.time()
        fetch = ["fetch", "--prune", "--tags", "--force", "-q", "origin"]
        try:
            git(fetch, git_dir=mirror)
        except GitError as error:
            if not self._drop_half_made_worktrees(mirror, str(error)):
                raise
            git(fetch, git_dir=mirror)
        state_file.write_text(json.dumps({"fingerprint": fingerprint, "started": now}))

    def _drop_half_made_worktrees(self, mirror: Path, message: str) -> list[str]:
        """Remove the worktrees a fetch named as bad objects whose HEAD is no commit; their names.

        A `git worktree add` killed mid-way leaves the worktree's HEAD as git's placeholder (the
        null object id), which makes every later fetch of the mirror fail its connectivity check.
        With the mirror's lock held no add is in progress on this host, so such a worktree is
        debris: its run, when resumed, checks out afresh.
        """
        dropped = []
        for name in sorted(set(_BAD_WORKTREE_HEAD.findall(message))):
            admin = mirror / "worktrees" / name
            try:
                head = (admin / "HEAD").read_text().strip()
                target = Path((admin / "gitdir").read_text().strip()).parent
            except OSError:
                continue
            if not _FULL_SHA.match(head):
                continue  # a symbolic HEAD: not git's placeholder, left to git
            if head != NULL_SHA and self._is_commit(mirror, head):
                continue
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(admin, ignore_errors=True)
            logger.warning(
                "removed worktree %s of %s, left half-made by a killed worker (HEAD %s)",
                name,
                mirror.name,
                head[:12],
            )
            dropped.append(name)
        return dropped

    def _is_commit(self, mirror: Path, sha: str) -> bool:
        return (
            git(["cat-file", "-e", f"{sha}^{{commit}}"], git_dir=mirror, allow_failure=True) == "ok"
        )

    def _write_excludes(self, mirror: Path) -> None:
        info = mirror / "info"
        info.mkdir(exist_ok=True)
        content = "\n".join(self.settings.checkpoint_excludes) + "\n"
        target = info / "exclude"
        with contextlib.suppress(OSError):
            if target.read_text() == content:
                return
        # Replaced whole: a checkpoint's `git add` in another run never reads a half-written file.
        tmp = info / "exclude.autopack-tmp"
        tmp.write_text(content)
        tmp.replace(target)

    def _snapshot(self, mirror: Path, directory: Path) -> None:
        """Commit a plain directory's files onto origin/main of the mirror (no-op when unchanged)."""
        env = {"GIT_INDEX_FILE": str(mirror / "snapshot.index"), "GIT_WORK_TREE": str(directory)}
        git(["add", "-A", "."], cwd=directory, git_dir=mirror, env=env)
        tree = git(["write-tree"], git_dir=mirror, env=env).strip()
        ref = f"refs/remotes/origin/{SNAPSHOT_BRANCH}"
        parent = git(["rev-parse", "--verify", "-q", ref], git_dir=mirror, check=False).strip()
        if parent:
            parent_tree = git(["rev-parse", f"{parent}^{{tree}}"], git_dir=mirror).strip()
            if parent_tree == tree:
                return
        args = ["commit-tree", tree, "-m", f"snapshot of {directory}"]
        if parent:
            args += ["-p", parent]
        commit = git(args, git_dir=mirror, env=_identity()).strip()
        git(["update-ref", ref, commit], git_dir=mirror)

    def resolve_ref(self, repo: str, ref: str) -> str:
        """The commit a branch, tag or sha names in the mirror."""
        mirror = self.mirror_path(repo)
        fetched = read_loose_ref(mirror, f"refs/remotes/origin/{ref}")  # the usual case: a branch
        if fetched is not None:
            return fetched
        candidates = [f"refs/remotes/origin/{ref}", f"refs/tags/{ref}"]
        if _SHA_RE.match(ref):
            candidates.append(ref)
        for candidate in candidates:
            sha = git(
                ["rev-parse", "--verify", "-q", "--end-of-options", f"{candidate}^{{commit}}"],
                git_dir=mirror,
                check=False,
            ).strip()
            if sha:
                return sha
        raise GitError(f"ref {ref!r} not found in repository {repo!r}")

    def checkout(self, repo: str, run_id: str, commit: str) -> Path:
        """A fresh worktree of commit on the run's branch (a leftover one is replaced)."""
        mirror = self.mirror_path(repo)
        path = self.worktree_path(run_id)
        add = ["worktree", "add", "-q", "--force", "-B", run_branch(run_id), str(path), commit]
        with self.locked(repo):
            self._remove_locked(mirror, path)
            if self._adopt_spare(repo, path, run_id, commit):
                return path
            try:
                git(add, git_dir=mirror)
            except GitError:
                # A worktree deleted without git's knowledge still holds the branch: forget it.
                # Double force also clears one locked by a `worktree add` killed mid-way (prune
                # skips locked worktrees).
                git(
                    ["worktree", "remove", "--force", "--force", str(path)],
                    git_dir=mirror,
                    check=False,
                )
                shutil.rmtree(path, ignore_errors=True)
                git(["worktree", "prune"], git_dir=mirror, check=False)
                _remove_stale_branch_lock(mirror, run_branch(run_id))
                git(add, git_dir=mirror)
        return path

    def prepare_spare(self, repo: str, commit: str) -> None:
        """Check out commit ahead of the mirror's next run, unless a spare is ready already.

        `checkout` then moves the spare to the run's path and switches it to the run's commit on
        the run's branch: two quick git commands instead of writing every file, and only the files
        that differ when the commit moved on meanwhile.
        """
        mirror = self.mirror_path(repo)
        spare = self.spare_path(repo)
        with self.locked(repo):
            if spare.exists() or not mirror.exists():
                return
            spare.parent.mkdir(parents=True, exist_ok=True)
            try:
                git(["worktree", "add", "-q", "--detach", str(spare), commit], git_dir=mirror)
            except GitError:
                self._remove_locked(mirror, spare)
                raise

    def recycle(
        self, repo: str, run_id: str, commit: str | None = None, *, pristine_at: str | None = None
    ) -> bool:
        """Keep a finished run's worktree as the repository's spare, instead of removing it.

        The worktree is detached at commit (the commit its repository's next run most likely
        starts from; the worktree's own head when None) with every tracked file reset, and its
        untracked and ignored files are deleted: `git checkout -f --detach`, then `git clean
        -ffdx`. That is two quick git commands, where removing the worktree and checking out a new
        spare writes every file twice, and it leaves the spare clean, so the next run of that
        commit takes it without starting git (see `_adopt_spare`). When a spare exists already,
        or anything fails, the worktree is removed. Returns whether it became the spare.

        pristine_at is the caller's word that the worktree's files are exactly that commit's,
        nothing untracked or ignored among them (a `git status --ignored` after the run's last
        change said so). When it is commit and HEAD is there too, HEAD is only detached, without
        starting git: a run that changed nothing is tidied up at once, so a run sent right
        after it does not wait for the two commands.
        """
        mirror = self.mirror_path(repo)
        path = self.worktree_path(run_id)
        spare = self.spare_path(repo)
        with self.locked(repo):
            if not path.exists():
                return False
            if not spare.exists():
                try:
                    admin = _worktree_admin(mirror, path)  # git runs in it only if it is ours
                    target = commit or self.head(path)
                    if pristine_at != target or not _detach_at(path, admin, target):
                        git(["checkout", "-q", "-f", "--detach", target], cwd=path)
                        git(["clean", "-q", "-ffdx"], cwd=path)
                    spare.parent.mkdir(parents=True, exist_ok=True)
                    _move_worktree(mirror, path, spare)
                    return True
                except (GitError, OSError) as error:
                    logger.warning(
                        "could not keep the worktree of run %s as a spare: %s", run_id, error
                    )
            self._remove_locked(mirror, path)
            return False

    def _adopt_spare(self, repo: str, path: Path, run_id: str, commit: str) -> bool:
        """Turn the mirror's spare into the run's worktree (lock held); False when there is none.

        A spare is always clean (made by `prepare_spare` or `recycle`), so when it is detached at
        the run's commit it only needs the run's branch, which is written without starting git;
        otherwise `git checkout -f -B` switches it to the commit.

        A spare that cannot be used (half-made by a killed worker, removed behind git's back) is
        removed, and the caller checks out afresh.
        """
        spare = self.spare_path(repo)
        if not spare.exists():
            return False
        mirror = self.mirror_path(repo)
        try:
            admin = _move_worktree(mirror, spare, path)
            if _branch_clean_spare(mirror, admin, run_branch(run_id), commit):
                return True
            switch = ["checkout", "-q", "-f", "--ignore-other-worktrees"]
            git([*switch, "-B", run_branch(run_id), commit], cwd=path)
        except (GitError, OSError) as error:
            logger.warning(
                "could not use the spare worktree of %s; checking out afresh: %s",
                repo,
                str(error)[:300],
            )
            self._remove_locked(mirror, spare)
            self._remove_locked(mirror, path)
            return False
        return True

    def commit_checkpoint(self, worktree: Path, message: str, *, changed: bool = True) -> str:
        """Commit everything in the worktree to the run branch; returns the new head.

        changed=False (`git status` found nothing) skips the commit: the head is the checkpoint,
        including any commit the phase made itself.
        """
        if not changed:
            return self.head(worktree)
        git(["add", "-A", "."], cwd=worktree)
        git(
            ["commit", "-q", "--allow-empty", "--no-verify", "-m", message],
            cwd=worktree,
            env=_identity(),
        )
        return self.head(worktree)

    def push_checkpoint(self, repo: str, run_id: str, commit: str) -> None:
        """Publish a checkpoint to the origin under a hidden ref, for workers on other hosts."""
        with self.locked(repo):
            git(
                ["push", "--force", "-q", "origin", f"{commit}:{checkpoint_ref(run_id)}"],
                git_dir=self.mirror_path(repo),
            )

    def has_commit(self, repo: str, commit: str) -> bool:
        """Whether this host's mirror holds the commit."""
        return self._is_commit(self.mirror_path(repo), commit)

    def fetch_checkpoint(self, repo: str, run_id: str) -> None:
        """Fetch a run's pushed checkpoint from the origin (best effort)."""
        ref = checkpoint_ref(run_id)
        with self.locked(repo):
            git(
                ["fetch", "-q", "origin", f"+{ref}:{ref}"],
                git_dir=self.mirror_path(repo),
                check=False,
            )

    def head(self, worktree: Path) -> str:
        """The commit the worktree is at (read from its files when they are plain, else by git)."""
        return read_worktree_head(worktree) or git(["rev-parse", "HEAD"], cwd=worktree).strip()

    def diff_summary(self, worktree: Path, max_chars: int = 8000) -> str:
        """What the worktree changed since its last commit: stat plus the added/removed lines, bounded."""
        git(["add", "-A", "--intent-to-add", "."], cwd=worktree, check=False)
        stat = git(["diff", "--stat", "HEAD"], cwd=worktree, check=False)
        body = git(["diff", "--unified=0", "HEAD"], cwd=worktree, check=False)
        lines = [
            line
            for line in body.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        return (stat + "\n" + "\n".join(lines))[:max_chars]

    def diffstat(self, worktree: Path, base: str, head: str) -> str:
        """`git diff --stat` of the run's result against its base."""
        return git(["diff", "--stat", base, head], cwd=worktree).strip()

    def remove(self, repo: str, run_id: str) -> None:
        """Remove a run's worktree (the branch stays in the mirror)."""
        with self.locked(repo):
            self._remove_locked(self.mirror_path(repo), self.worktree_path(run_id))

    def _remove_locked(self, mirror: Path, path: Path) -> None:
        """Remove a worktree (a path already gone is left to `checkout`'s prune-and-retry)."""
        if not path.exists():
            return
        removed = git(
            ["worktree", "remove", "--force", "--force", str(path)],
            git_dir=mirror,
            check=False,
            allow_failure=True,
        )
        if removed != "ok" or path.exists():
            shutil.rmtree(path, ignore_errors=True)
            git(["worktree", "prune"], git_dir=mirror, check=False)

    def run_ids_on_disk(self) -> list[str]:
        """Runs that have a worktree on this host."""
        return sorted(p.name for p in self.worktrees.iterdir() if p.is_dir())

    def collect_orphans(self, active: set[str]) -> list[str]:
        """Remove worktrees of runs not in active, and prune every mirror; returns removed run ids."""
        removed = []
        for run_id in self.run_ids_on_disk():
            if run_id in active:
                continue
            shutil.rmtree(self.worktree_path(run_id), ignore_errors=True)
            removed.append(run_id)
        for mirror in self.mirrors.glob("*.git"):
            with self.locked(mirror.stem):
                git(["worktree", "prune"], git_dir=mirror, check=False)
        if removed:
            logger.info("removed orphaned worktrees: %s", ", ".join(removed))
        return removed


def _worktree_admin(mirror: Path, path: Path) -> Path:
    """The mirror's record of the worktree at path (`<mirror>/worktrees/<id>`).

    Raises GitError unless path is an unlocked worktree of this mirror.
    """
    try:
        pointer = (path / ".git").read_text().strip()
    except OSError as error:
        raise GitError(f"{path} is not a worktree: {error}") from error
    admin = Path(pointer.removeprefix("gitdir: ")) if pointer.startswith("gitdir: ") else None
    worktrees = (mirror / "worktrees").resolve()
    if admin is None or admin.resolve().parent != worktrees or not (admin / "gitdir").is_file():
        raise GitError(f"{path} is not a worktree of {mirror}")
    if (admin / "locked").exists():
        raise GitError(f"worktree {path} is locked")
    return admin


def _move_worktree(mirror: Path, source: Path, target: Path) -> Path:
    """`git worktree move` without starting git: rename the folder, then point the mirror's
    record of the worktree at its new place, as `git worktree repair` does after a manual move
    (gitrepository-layout(5): worktrees/<id>/gitdir holds the path of the worktree's .git file).

    Returns the mirror's record of the worktree. Raises GitError, leaving the worktree where it
    was, unless it is an unlocked worktree of this mirror and target does not exist.
    """
    admin = _worktree_admin(mirror, source)
    if target.exists():
        raise GitError(f"{target} exists already")
    source.rename(target)
    record = admin / "gitdir"
    staged = record.with_name("gitdir.autopack-tmp")
    staged.write_text(f"{target / '.git'}\n")
    staged.replace(record)
    return admin


_SIMPLE_BRANCH = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


def _branch_clean_spare(mirror: Path, admin: Path, branch: str, commit: str) -> bool:
    """Put a clean worktree detached at commit on a new branch, as `git checkout -B` would, without
    starting git; False (nothing changed) when git must do it.

    Only the files ref storage of gitrepository-layout(5) is written, with git's own locking: the
    branch's loose ref is created through `<ref>.lock` (O_EXCL, then a rename), then the worktree's
    HEAD made a symbolic ref to it the same way. A branch that exists already (loose or packed),
    an unusual name, a HEAD that is not exactly commit, or another ref storage leave it to git.
    """
    refname = f"refs/heads/{branch}"
    heads = mirror / "refs" / "heads"
    if not _FULL_SHA.match(commit) or not _SIMPLE_BRANCH.match(branch):
        return False
    if not heads.is_dir() or (mirror / "reftable").exists():
        return False
    try:
        if (admin / "HEAD").read_text() != f"{commit}\n":
            return False
        packed = mirror / "packed-refs"
        if packed.exists() and f" {refname}\n".encode() in packed.read_bytes():
            return False
        ref = mirror / refname
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not _write_locked(ref, f"{commit}\n", exclusive=True):
            return False
        if not _write_locked(admin / "HEAD", f"ref: {refname}\n", exclusive=False):
            ref.unlink(missing_ok=True)
            return False
    except OSError:
        return False
    return True


def _detach_at(path: Path, admin: Path, commit: str) -> bool:
    """Detach the worktree at path (its record in the mirror: admin) whose HEAD is at commit, as
    `git checkout --detach` would, without starting git: the HEAD file becomes the commit's id,
    written through `HEAD.lock`. False (nothing changed) when HEAD is not plainly at commit or
    its lock is held, or when a folder holds no file (`git clean -d` would remove it; an
    uninitialised submodule is one too): git must do it."""
    if not _FULL_SHA.match(commit) or read_worktree_head(path) != commit:
        return False
    try:
        if _has_empty_folder(path):
            return False
        return _write_locked(admin / "HEAD", f"{commit}\n", exclusive=False)
    except OSError:
        return False


def _has_empty_folder(root: Path) -> bool:
    """Whether a folder under root holds no file at any depth; `git status` never reports one.
    Raises OSError when a folder cannot be read."""

    def fail(error: OSError) -> None:
        raise error

    # A folder without files at any depth has such a folder at its bottom: no entries at all.
    return any(
        not dirnames and not filenames for _, dirnames, filenames in os.walk(root, onerror=fail)
    )


# A ref's lock file is held for the milliseconds of one ref update; one older than this was left
# by a process killed while writing the ref.
STALE_REF_LOCK_S = 1.0


def _remove_stale_branch_lock(mirror: Path, branch: str) -> None:
    """Remove the run branch's lock file when it is stale (git's own, or `_write_locked`'s): git
    refuses the branch while it exists. Called when checking out has failed, with the mirror's
    lock held by the run's lease holder, the only writer of its branch; a fresh lock (another
    writer, a fenced-out worker still running) is left alone, and the checkout fails."""
    lock = mirror / "refs" / "heads" / f"{branch}.lock"
    try:
        if time.time() - lock.stat().st_mtime < STALE_REF_LOCK_S:
            return
        lock.unlink()
    except FileNotFoundError:
        return
    logger.warning("removed %s, left by a process killed while writing the branch", lock)


def _write_locked(path: Path, content: str, *, exclusive: bool) -> bool:
    """Replace path with content through `<path>.lock`, as git does; False when another writer
    holds the lock or, with exclusive, when path exists already."""
    lock = path.with_name(f"{path.name}.lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        if exclusive and path.exists():
            lock.unlink()
            return False
        lock.replace(path)
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    return True


def _read_fetch_state(path: Path) -> dict[str, object]:
    """The last fetch's record; empty when there is none or it cannot be read."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _is_git_repository(path: Path) -> bool:
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _identity() -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": CHECKPOINT_AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": CHECKPOINT_AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": CHECKPOINT_AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": CHECKPOINT_AUTHOR_EMAIL,
    }
