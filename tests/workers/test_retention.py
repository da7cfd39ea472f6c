"""Retention cleanup and the disk budget on real PostgreSQL and git: what finished runs leave goes."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.constants import checkpoint_ref, run_branch
from shared.db import transaction
from shared.models import Run, utcnow
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import wait_until
from workers.executor import RunExecutor
from workers.retention import clean_up
from workers.sweeper import Sweeper
from workers.workspace import Workspaces

DAY = 24 * 3600
TWO_MB = 2 * 1024 * 1024


class Host:
    """One worker host: its own data directory, executing runs of one repository in-process."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        origin: Path,
        data_dir: Path,
        repo: str | None = None,
        **overrides: Any,
    ) -> None:
        self.sessions, self.origin = sessions, origin
        self.settings = settings.model_copy(
            update={"data_dir": data_dir, "keep_failed_worktrees": True, **overrides}
        )
        self.spaces = Workspaces(self.settings)
        self.repo = repo or f"ret-{uuid.uuid4().hex[:8]}"
        if repo is None:
            with transaction(sessions) as session:
                repos.add(session, self.repo, str(origin))

    def submit(self, phases: list[dict[str, Any]]) -> str:
        spec = RunCreate.model_validate({"repo": self.repo, "goal": "retention", "phases": phases})
        with transaction(self.sessions) as session:
            return service.submit(session, self.settings, spec).run.id

    def execute(self, phases: list[dict[str, Any]]) -> str:
        run_id = self.submit(phases)
        RunExecutor(self.settings, self.sessions, "retention-worker").execute(run_id)
        return run_id

    def failed_run(self, ended_ago_s: float, extra: str = "") -> str:
        """A failed run whose worktree is kept, with a pushed checkpoint when checkpoint_push is on."""
        run_id = self.execute(
            [
                {"id": "work", "run": f"echo work > work.txt{extra}"},
                {"id": "fail", "run": "exit 7"},
            ]
        )
        assert status(self.sessions, run_id) == "failed"
        self.ended(run_id, ended_ago_s)
        return run_id

    def ended(self, run_id: str, ago_s: float) -> None:
        with transaction(self.sessions) as session:
            session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(finished_at=utcnow() - timedelta(seconds=ago_s))
            )

    @property
    def mirror(self) -> Path:
        return self.spaces.mirror_path(self.repo)

    def has_ref(self, git: Callable[..., str], where: Path, ref: str) -> bool:
        return bool(git(where, "for-each-ref", "--format=%(refname)", ref).strip())


def status(sessions: sessionmaker[Session], run_id: str) -> str:
    with sessions() as session:
        return repository.get_run(session, run_id).status


@pytest.fixture
def origin(make_repo: Callable[..., Path]) -> Path:
    return make_repo({"README.md": "# retention\n"})


def test_finished_run_past_retention_loses_worktree_branch_and_checkpoint_refs(
    sessions: sessionmaker[Session],
    settings: Settings,
    origin: Path,
    tmp_path: Path,
    git: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = Host(sessions, settings, origin, tmp_path / "host", checkpoint_push=True)
    old = host.failed_run(ended_ago_s=8 * DAY)
    recent = host.failed_run(ended_ago_s=DAY)
    for run_id in (old, recent):
        host.spaces.fetch_checkpoint(host.repo, run_id)  # as a resuming host would have it
        assert host.spaces.worktree_path(run_id).is_dir()
        assert host.has_ref(git, host.mirror, f"refs/heads/{run_branch(run_id)}")
        assert host.has_ref(git, host.mirror, checkpoint_ref(run_id))
        assert host.has_ref(git, origin, checkpoint_ref(run_id))
        assert (host.settings.data_dir / "logs" / run_id).is_dir()

    caplog.set_level(logging.INFO, logger="workers.retention")
    report = clean_up(sessions, host.settings)

    assert report.worktrees == [old] and report.branches == [old]
    assert report.checkpoint_refs == [old] and report.origin_refs == [old]
    assert report.logs == [old] and report.failures == []
    assert not host.spaces.worktree_path(old).exists()
    assert not host.has_ref(git, host.mirror, f"refs/heads/{run_branch(old)}")
    assert not host.has_ref(git, host.mirror, checkpoint_ref(old))
    assert not host.has_ref(git, origin, checkpoint_ref(old))
    assert not (host.settings.data_dir / "logs" / old).exists()
    assert old not in git(host.mirror, "worktree", "list")
    # the refs that stay are packed: no file per run branch for every fetch to read
    assert not (host.mirror / "refs" / "heads" / run_branch(recent)).exists()
    assert f"refs/heads/{run_branch(recent)}" in (host.mirror / "packed-refs").read_text()
    # within retention: everything stays
    assert host.spaces.worktree_path(recent).is_dir()
    assert host.has_ref(git, host.mirror, f"refs/heads/{run_branch(recent)}")
    assert host.has_ref(git, host.mirror, checkpoint_ref(recent))
    assert host.has_ref(git, origin, checkpoint_ref(recent))
    # one line per action, each naming the run
    actions = [r.getMessage() for r in caplog.records if r.name == "workers.retention"]
    assert len(actions) == 5 and all(old in line for line in actions), actions

    caplog.clear()
    again = clean_up(sessions, host.settings)
    assert not again.acted and again.failures == []
    assert not [r for r in caplog.records if r.name == "workers.retention"]
    assert host.spaces.worktree_path(recent).is_dir()
    assert host.has_ref(git, origin, checkpoint_ref(recent))


def test_each_host_cleans_its_own_data_dir_and_origin_refs_go_once(
    sessions: sessionmaker[Session],
    settings: Settings,
    origin: Path,
    tmp_path: Path,
    git: Callable[..., str],
) -> None:
    host_a = Host(sessions, settings, origin, tmp_path / "a", checkpoint_push=True)
    ran_on_a = host_a.failed_run(ended_ago_s=30 * DAY)
    # the same repository, executed on another host
    host_b = Host(sessions, settings, origin, tmp_path / "b", host_a.repo, checkpoint_push=True)
    ran_on_b = host_b.failed_run(ended_ago_s=30 * DAY)
    for run_id in (ran_on_a, ran_on_b):
        assert host_a.has_ref(git, origin, checkpoint_ref(run_id))

    report_a = clean_up(sessions, host_a.settings)
    # host A removes its own worktree and branch, and every expired checkpoint ref on the origin
    assert report_a.worktrees == [ran_on_a] and report_a.branches == [ran_on_a]
    assert sorted(report_a.origin_refs) == sorted([ran_on_a, ran_on_b])
    assert host_b.spaces.worktree_path(ran_on_b).is_dir()  # not its data directory
    assert host_b.has_ref(git, host_b.mirror, f"refs/heads/{run_branch(ran_on_b)}")

    report_b = clean_up(sessions, host_b.settings)
    assert report_b.worktrees == [ran_on_b] and report_b.branches == [ran_on_b]
    assert report_b.origin_refs == [] and report_a.failures == report_b.failures == []
    assert not host_b.spaces.worktree_path(ran_on_b).exists()
    for run_id in (ran_on_a, ran_on_b):
        assert not host_a.has_ref(git, origin, checkpoint_ref(run_id))


def test_running_run_is_never_touched(
    sessions: sessionmaker[Session],
    settings: Settings,
    origin: Path,
    tmp_path: Path,
    git: Callable[..., str],
) -> None:
    host = Host(
        sessions,
        settings,
        origin,
        tmp_path / "host",
        retention_s=0.0,
        workspace_disk_budget_mb=1,
        checkpoint_push=True,
    )
    started, release = tmp_path / "started", tmp_path / "release"
    run_id = host.submit(
        [
            {"id": "first", "run": "echo one > one.txt"},
            {
                "id": "hold",
                "run": f"head -c {TWO_MB} /dev/urandom > big.bin; touch {started}; "
                f"while [ ! -e {release} ]; do sleep 0.05; done",
                "timeout_s": 120,
            },
        ]
    )
    executor = RunExecutor(host.settings, sessions, "retention-worker")
    outcome: list[str | None] = []
    thread = threading.Thread(target=lambda: outcome.append(executor.execute(run_id)))
    thread.start()
    try:
        wait_until(started.exists, timeout=60, what="the holding phase to start")
        assert status(sessions, run_id) == "running"

        report = clean_up(sessions, host.settings)  # retention 0 and a budget it is over

        assert not report.acted
        assert (host.spaces.worktree_path(run_id) / "big.bin").is_file()
        assert host.has_ref(git, host.mirror, f"refs/heads/{run_branch(run_id)}")
        assert host.has_ref(git, origin, checkpoint_ref(run_id))
    finally:
        release.touch()
        thread.join(timeout=60)
    assert outcome == ["succeeded"]


def test_disk_budget_removes_oldest_finished_worktrees_first_until_under_budget(
    sessions: sessionmaker[Session],
    settings: Settings,
    origin: Path,
    tmp_path: Path,
    git: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = Host(sessions, settings, origin, tmp_path / "host", workspace_disk_budget_mb=3)
    big = f"; head -c {TWO_MB} /dev/urandom > big.bin"
    # executed in this order, finished in another: the budget goes by finish time
    middle = host.failed_run(ended_ago_s=2 * 3600, extra=big)
    newest = host.failed_run(ended_ago_s=1 * 3600, extra=big)
    oldest = host.failed_run(ended_ago_s=3 * 3600, extra=big)

    caplog.set_level(logging.INFO, logger="workers.retention")
    report = clean_up(sessions, host.settings)

    assert report.budget_worktrees == [oldest, middle]
    assert report.worktrees == [] and report.branches == []  # all within retention
    assert not host.spaces.worktree_path(oldest).exists()
    assert not host.spaces.worktree_path(middle).exists()
    assert (host.spaces.worktree_path(newest) / "big.bin").is_file()
    for run_id in (oldest, middle, newest):  # the budget only frees worktrees
        assert host.has_ref(git, host.mirror, f"refs/heads/{run_branch(run_id)}")
    lines = [r.getMessage() for r in caplog.records if "disk budget" in r.getMessage()]
    assert len(lines) == 2 and oldest in lines[0] and middle in lines[1]

    assert not clean_up(sessions, host.settings).acted  # under budget now: nothing more goes


def test_sweeper_runs_retention(
    sessions: sessionmaker[Session],
    settings: Settings,
    origin: Path,
    tmp_path: Path,
    git: Callable[..., str],
) -> None:
    host = Host(
        sessions,
        settings,
        origin,
        tmp_path / "host",
        sweep_interval_s=0.1,
        retention_interval_s=0.1,
    )
    run_id = host.failed_run(ended_ago_s=30 * DAY)
    assert host.spaces.worktree_path(run_id).is_dir()

    class Recorder:
        def enqueue_run(self, run_id: str, queue: str | None = None) -> None:
            return None

    sweeper = Sweeper(sessions, Recorder(), host.settings)
    sweeper.start()
    try:
        wait_until(
            lambda: (
                not host.spaces.worktree_path(run_id).exists()
                and not host.has_ref(git, host.mirror, f"refs/heads/{run_branch(run_id)}")
            ),
            timeout=30,
            what="the reconciler to apply retention",
        )
    finally:
        sweeper.stop()


def test_retention_lets_git_pack_a_mirrors_loose_objects_when_due(
    sessions: sessionmaker[Session],
    settings: Settings,
    origin: Path,
    tmp_path: Path,
    git: Callable[..., str],
) -> None:
    host = Host(sessions, settings, origin, tmp_path / "host")
    run_id = host.execute([{"id": "work", "run": "echo a > a.txt"}])
    assert status(sessions, run_id) == "succeeded"
    # 2,000 loose objects reachable from a branch, as many runs' checkpoints would leave
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for n in range(2000):
        (blobs / str(n)).write_text(f"{n}\n")
    env = {**os.environ, "GIT_DIR": str(host.mirror), "GIT_INDEX_FILE": str(tmp_path / "index")}
    shas = subprocess.run(
        ["git", "hash-object", "-w", "--stdin-paths"],
        input="\n".join(str(blobs / str(n)) for n in range(2000)),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    index_info = "".join(f"100644 {sha}\tf{n}\n" for n, sha in enumerate(shas))
    subprocess.run(
        ["git", "update-index", "--index-info"], input=index_info, env=env, check=True, text=True
    )
    tree = subprocess.run(
        ["git", "write-tree"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    commit = git(host.mirror, "commit-tree", tree, "-m", "bulk").strip()
    git(host.mirror, "update-ref", "refs/heads/bulk", commit)

    def loose() -> int:
        counts = dict(
            line.split(": ") for line in git(host.mirror, "count-objects", "-v").splitlines()
        )
        return int(counts["count"])

    assert loose() > 2000
    git(host.mirror, "config", "gc.auto", "500")  # due at ~500 loose objects instead of 6,700
    clean_up(sessions, host.settings)
    # git found packing due: everything reachable is packed (a recent unreachable object or two
    # stays loose until gc.pruneExpire)
    assert loose() < 10
    assert git(host.mirror, "cat-file", "-t", f"{commit}:f1999").strip() == "blob"
    assert git(host.mirror, "cat-file", "-t", run_branch(run_id)).strip() == "commit"
