"""Retention: what finished runs leave on this host is removed once old enough, or sooner under a budget.

The reconciler of every worker calls clean_up every retention_interval_s on its own data directory:

- finished runs past retention_s lose their worktree, their run branch and checkpoint ref in this
  host's mirror, their attempt log files (the database keeps a copy), and, with checkpoint_push,
  their checkpoint ref on the origin (`git push --delete`; a failure is logged and retried on the
  next pass because the ref is listed again);
- when workspace_disk_budget_mb is set and the worktrees exceed it, finished runs' worktrees are
  removed oldest-finished first until under the budget, even within retention;
- every mirror's worktree metadata is pruned.

Only runs the database knows as finished are touched: running, queued and cancelling runs never are,
and worktrees of runs unknown to the database are left to collect_orphans (at worker start). Every
action is idempotent and logged with the run id, so several hosts (each cleaning its own data
directory, all deleting the same origin refs) and repeated passes are safe.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.constants import CHECKPOINT_REF_PREFIX, RUN_BRANCH_PREFIX, checkpoint_ref
from shared.logs import log_context
from shared.models import Run, utcnow
from shared.runs.states import RUN_TERMINAL
from shared.settings import Settings
from workers.disk import MB, tree_size
from workers.gitcmd import GitError, git
from workers.workspace import Workspaces

logger = logging.getLogger(__name__)

BRANCH_REFS = f"refs/heads/{RUN_BRANCH_PREFIX}"
REMOTE_TIMEOUT_S = 120.0
_QUERY_CHUNK = 500


@dataclass
class CleanupReport:
    """What one pass did, by run id (each list holds the runs of one kind of action)."""

    worktrees: list[str] = field(default_factory=list)  # removed past retention
    budget_worktrees: list[str] = field(default_factory=list)  # removed to get under the budget
    branches: list[str] = field(default_factory=list)  # run branches deleted in a mirror
    checkpoint_refs: list[str] = field(default_factory=list)  # checkpoint refs deleted in a mirror
    origin_refs: list[str] = field(default_factory=list)  # checkpoint refs deleted on the origin
    logs: list[str] = field(default_factory=list)  # attempt log folders removed
    failures: list[str] = field(default_factory=list)  # what failed; the next pass retries

    @property
    def acted(self) -> bool:
        """Whether the pass removed anything."""
        return any(
            (
                self.worktrees,
                self.budget_worktrees,
                self.branches,
                self.checkpoint_refs,
                self.origin_refs,
                self.logs,
            )
        )


@dataclass(frozen=True)
class _Finished:
    """A run the database knows, as far as retention cares."""

    repo: str
    finished: bool
    ended_at: datetime


@dataclass
class _Holdings:
    """What this host (and, with checkpoint_push, the origin) holds, by run id."""

    worktrees: set[str] = field(default_factory=set)
    logs: set[str] = field(default_factory=set)
    local_refs: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # repo -> run -> refs
    origin_refs: dict[str, set[str]] = field(default_factory=dict)  # repo -> runs

    def run_ids(self) -> set[str]:
        ids = self.worktrees | self.logs
        for by_run in self.local_refs.values():
            ids |= by_run.keys()
        for runs in self.origin_refs.values():
            ids |= runs
        return ids


def clean_up(
    sessions: sessionmaker[Session], settings: Settings, now: datetime | None = None
) -> CleanupReport:
    """One retention pass over this host's data directory; a second pass right after does nothing."""
    spaces = Workspaces(settings)
    report = CleanupReport()
    cutoff = (now or utcnow()) - timedelta(seconds=settings.retention_s)
    held = _holdings(spaces, settings, report)
    known = _known_runs(sessions, held.run_ids())
    expired = {
        run_id for run_id, run in known.items() if run.finished and _aware(run.ended_at) < cutoff
    }
    for run_id in sorted(expired & held.worktrees):
        if _remove_worktree(spaces, known[run_id].repo, run_id, report):
            report.worktrees.append(run_id)
            _info(run_id, "removed the worktree of run %s, finished %s", known[run_id])
    for run_id in sorted(expired & held.logs):
        shutil.rmtree(settings.data_dir / "logs" / run_id, ignore_errors=True)
        report.logs.append(run_id)
        _info(run_id, "removed the attempt logs of run %s, finished %s", known[run_id])
    for repo, runs in sorted(held.origin_refs.items()):
        for run_id in sorted(expired & runs):
            _delete_origin_ref(spaces, repo, run_id, known[run_id], report)
    for repo, by_run in sorted(held.local_refs.items()):
        for run_id in sorted(expired & by_run.keys()):
            if spaces.worktree_path(run_id).exists():
                continue  # its worktree could not be removed: keep the branch it has checked out
            _delete_local_refs(spaces, repo, run_id, by_run[run_id], known[run_id], report)
    if settings.workspace_disk_budget_mb is not None:
        _enforce_budget(spaces, settings.workspace_disk_budget_mb, known, report)
    for mirror in sorted(spaces.mirrors.glob("*.git")):
        with spaces.locked(_repo_of(mirror)):
            git(["worktree", "prune"], git_dir=mirror, check=False)
            # One file per run branch slows every fetch (measured: 9 ms with none, 104 ms with
            # 5,000 loose refs, 12 ms once packed); packing keeps each run's fetch cheap.
            git(["pack-refs", "--all", "--prune"], git_dir=mirror, check=False)
            # Objects of deleted run branches and checkpoints: git decides when packing and
            # pruning is due (a no-op most passes), in the foreground so the lock covers it.
            git(
                ["-c", "gc.autoDetach=false", "gc", "--auto", "--quiet"],
                git_dir=mirror,
                check=False,
            )
    return report


def _holdings(spaces: Workspaces, settings: Settings, report: CleanupReport) -> _Holdings:
    held = _Holdings(worktrees=set(spaces.run_ids_on_disk()))
    logs = settings.data_dir / "logs"
    if logs.is_dir():
        held.logs = {p.name for p in logs.iterdir() if p.is_dir()}
    for mirror in sorted(spaces.mirrors.glob("*.git")):
        repo = _repo_of(mirror)
        listed = git(
            [
                "for-each-ref",
                "--format=%(refname)",
                BRANCH_REFS.rstrip("/"),
                CHECKPOINT_REF_PREFIX.rstrip("/"),
            ],
            git_dir=mirror,
            check=False,
        )
        by_run: dict[str, list[str]] = {}
        for ref in listed.split():
            run_id = _run_of(ref)
            if run_id:
                by_run.setdefault(run_id, []).append(ref)
        if by_run:
            held.local_refs[repo] = by_run
        if settings.checkpoint_push and _has_origin(mirror):
            try:
                remote = git(
                    ["ls-remote", "origin", f"{CHECKPOINT_REF_PREFIX}*"],
                    git_dir=mirror,
                    timeout=REMOTE_TIMEOUT_S,
                )
            except Exception as error:  # unreachable origin: its refs wait for the next pass
                logger.warning(
                    "could not list checkpoint refs on the origin of %s: %s", repo, error
                )
                report.failures.append(f"ls-remote {repo}")
                continue
            runs = {
                run_id
                for line in remote.splitlines()
                if (run_id := _run_of(line.partition("\t")[2].strip()))
            }
            if runs:
                held.origin_refs[repo] = runs
    return held


def _known_runs(sessions: sessionmaker[Session], run_ids: Iterable[str]) -> dict[str, _Finished]:
    """The runs of run_ids the database knows; the others are orphans, not retention's business."""
    ids = sorted(run_ids)
    known: dict[str, _Finished] = {}
    with sessions() as session:
        for start in range(0, len(ids), _QUERY_CHUNK):
            rows = session.execute(
                select(Run.id, Run.repo, Run.status, Run.finished_at, Run.updated_at).where(
                    Run.id.in_(ids[start : start + _QUERY_CHUNK])
                )
            ).tuples()
            for run_id, repo, status, finished_at, updated_at in rows:
                known[run_id] = _Finished(
                    repo=repo,
                    finished=status in RUN_TERMINAL,
                    ended_at=finished_at or updated_at,
                )
    return known


def _remove_worktree(spaces: Workspaces, repo: str, run_id: str, report: CleanupReport) -> bool:
    try:
        spaces.remove(repo, run_id)
    except Exception as error:
        logger.warning("could not remove the worktree of run %s: %s", run_id, error)
        report.failures.append(f"worktree {run_id}")
        return False
    return not spaces.worktree_path(run_id).exists()


def _delete_origin_ref(
    spaces: Workspaces, repo: str, run_id: str, run: _Finished, report: CleanupReport
) -> None:
    ref = checkpoint_ref(run_id)
    try:
        git(
            ["push", "-q", "origin", "--delete", ref],
            git_dir=spaces.mirror_path(repo),
            timeout=REMOTE_TIMEOUT_S,
        )
    except Exception as error:  # GitError, or a timeout on an unreachable origin
        if "remote ref does not exist" not in str(error):
            logger.warning("could not delete %s on the origin of %s: %s", ref, repo, error)
            report.failures.append(f"origin {ref}")
            return
        # another host deleted it first: the outcome is the same
    report.origin_refs.append(run_id)
    _info(run_id, "deleted the checkpoint ref of run %s on the origin, finished %s", run)


def _delete_local_refs(
    spaces: Workspaces,
    repo: str,
    run_id: str,
    refs: list[str],
    run: _Finished,
    report: CleanupReport,
) -> None:
    mirror = spaces.mirror_path(repo)
    with spaces.locked(repo):
        for ref in refs:
            try:
                git(["update-ref", "-d", ref], git_dir=mirror)
            except GitError as error:
                logger.warning("could not delete %s of run %s: %s", ref, run_id, error)
                report.failures.append(f"ref {ref}")
                continue
            if ref.startswith(BRANCH_REFS):
                report.branches.append(run_id)
                _info(run_id, "deleted the branch of run %s in the mirror, finished %s", run)
            else:
                report.checkpoint_refs.append(run_id)
                _info(
                    run_id, "deleted the checkpoint ref of run %s in the mirror, finished %s", run
                )


def _enforce_budget(
    spaces: Workspaces, budget_mb: int, known: dict[str, _Finished], report: CleanupReport
) -> None:
    """Remove finished runs' worktrees, oldest-finished first, until the worktrees fit the budget."""
    sizes = {run_id: tree_size(spaces.worktree_path(run_id)) for run_id in spaces.run_ids_on_disk()}
    total, budget = sum(sizes.values()), budget_mb * MB
    if total <= budget:
        return
    finished = sorted(
        (_aware(known[run_id].ended_at), run_id)
        for run_id in sizes
        if run_id in known and known[run_id].finished
    )
    for _ended, run_id in finished:
        if total <= budget:
            break
        run = known[run_id]
        if not _remove_worktree(spaces, run.repo, run_id, report):
            continue
        total -= sizes[run_id]
        report.budget_worktrees.append(run_id)
        with log_context(run_id=run_id):
            logger.info(
                "disk budget: removed the worktree of run %s, finished %s (%d MB freed; worktrees "
                "now use %d MB of %d MB)",
                run_id,
                run.ended_at.isoformat(),
                sizes[run_id] // MB,
                total // MB,
                budget_mb,
            )
    if total > budget:
        logger.warning(
            "worktrees use %d MB, over the disk budget of %d MB, and no finished run's worktree "
            "is left to remove",
            total // MB,
            budget_mb,
        )


def _info(run_id: str, message: str, run: _Finished) -> None:
    with log_context(run_id=run_id):
        logger.info("retention: " + message, run_id, run.ended_at.isoformat())


def _run_of(ref: str) -> str | None:
    for prefix in (BRANCH_REFS, CHECKPOINT_REF_PREFIX):
        if ref.startswith(prefix) and len(ref) > len(prefix):
            return ref[len(prefix) :]
    return None


def _repo_of(mirror: Path) -> str:
    return mirror.name.removesuffix(".git")


def _has_origin(mirror: Path) -> bool:
    return bool(git(["config", "--get", "remote.origin.url"], git_dir=mirror, check=False).strip())


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes; PostgreSQL aware ones."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
