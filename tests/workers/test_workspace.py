"""Mirrors and worktrees on real git: snapshots of plain directories, refs, orphan collection."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.constants import run_branch
from shared.settings import Settings
from workers.changes import tree_status
from workers.gitcmd import GitError, read_loose_ref, read_worktree_head
from workers.gitcmd import git as run_git
from workers.phases import build_env
from workers.workspace import FETCH_STATE_FILE, Workspaces


@pytest.fixture
def spaces(tmp_path: Path) -> Workspaces:
    return Workspaces(Settings(data_dir=tmp_path / "data"))


def test_plain_directory_is_imported_as_snapshot_and_reimported_on_change(
    spaces: Workspaces, tmp_path: Path
) -> None:
    project = tmp_path / "plain"
    project.mkdir()
    (project / "a.txt").write_text("1\n")
    spaces.sync_mirror("plain", str(project))
    first = spaces.resolve_ref("plain", "main")
    spaces.sync_mirror("plain", str(project))
    assert spaces.resolve_ref("plain", "main") == first  # unchanged files: no new commit
    (project / "a.txt").write_text("2\n")
    spaces.sync_mirror("plain", str(project))
    assert spaces.resolve_ref("plain", "main") != first


def test_fetch_sees_new_commits_and_resolves_tags_and_shas(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    old = spaces.resolve_ref("r", "main")
    (origin / "a.txt").write_text("2\n")
    git(origin, "commit", "-qam", "second")
    git(origin, "tag", "v1")
    spaces.sync_mirror("r", str(origin))
    new = spaces.resolve_ref("r", "main")
    assert new != old
    assert spaces.resolve_ref("r", "v1") == new
    assert spaces.resolve_ref("r", old[:10]) == old
    with pytest.raises(GitError, match="not found"):
        spaces.resolve_ref("r", "no-such-branch")


def test_collect_orphans_removes_worktrees_of_inactive_runs_only(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo()
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    for run_id in ("alive", "dead"):
        spaces.checkout("r", run_id, commit)
    removed = spaces.collect_orphans(active={"alive"})
    assert removed == ["dead"]
    assert spaces.worktree_path("alive").exists() and not spaces.worktree_path("dead").exists()
    listed = git(spaces.mirror_path("r"), "worktree", "list")
    assert "alive" in listed and "dead" not in listed


def test_checkout_replaces_a_dirty_leftover_worktree(
    spaces: Workspaces, make_repo: Callable[..., Path]
) -> None:
    origin = make_repo({"a.txt": "clean\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    path = spaces.checkout("r", "run", commit)
    (path / "a.txt").write_text("dirty\n")
    (path / "junk").write_text("x")
    path = spaces.checkout("r", "run", commit)
    assert (path / "a.txt").read_text() == "clean\n" and not (path / "junk").exists()


def test_checkout_after_worktree_deleted_behind_gits_back(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    """A worktree removed with rm -rf still holds its branch in git; checkout recovers from that."""
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    path = spaces.checkout("r", "run", commit)
    shutil.rmtree(path)
    assert "prunable" in git(spaces.mirror_path("r"), "worktree", "list")
    path = spaces.checkout("r", "run", commit)
    assert (path / "a.txt").read_text() == "1\n"
    # As left by a worker killed inside `git worktree add`: locked, and its directory gone.
    git(spaces.mirror_path("r"), "worktree", "lock", "--reason", "initializing", str(path))
    shutil.rmtree(path)
    path = spaces.checkout("r", "run", commit)
    assert (path / "a.txt").read_text() == "1\n"


def test_checkout_recovers_from_a_branch_lock_left_by_a_killed_process(
    spaces: Workspaces, make_repo: Callable[..., Path]
) -> None:
    """A worker killed while writing a run's branch leaves `<ref>.lock`: the resumed run's checkout
    must not fail on it (it did, once, in the kill -9 storm)."""
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    lock = spaces.mirror_path("r") / "refs" / "heads" / "autopack" / "run" / "killed.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f"{commit}\n")
    os.utime(lock, (time.time() - 60, time.time() - 60))  # left a minute ago
    path = spaces.checkout("r", "killed", commit)
    assert (path / "a.txt").read_text() == "1\n" and not lock.exists()


def test_checkpoint_without_changes_makes_no_commit_but_keeps_the_phases_own_commit(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    path = spaces.checkout("r", "run", commit)
    assert spaces.commit_checkpoint(path, "nothing", changed=False) == commit
    (path / "a.txt").write_text("2\n")
    git(path, "commit", "-qam", "made by the phase")
    own = spaces.head(path)
    assert own != commit and spaces.commit_checkpoint(path, "clean", changed=False) == own
    (path / "b.txt").write_text("new\n")
    changed = spaces.commit_checkpoint(path, "phase 2")
    assert changed != own and git(path, "log", "-1", "--format=%s").strip() == "phase 2"


def test_fetch_repairs_a_worktree_left_half_made_by_a_killed_worktree_add(
    spaces: Workspaces,
    make_repo: Callable[..., Path],
    git: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    healthy = spaces.checkout("r", "healthy", commit)
    broken = spaces.checkout("r", "killed", commit)
    # What `git worktree add` leaves when killed before checkout: HEAD is git's null placeholder
    # and the worktree is locked "initializing".
    admin = spaces.mirror_path("r") / "worktrees" / "killed"
    (admin / "HEAD").write_text("0" * 40 + "\n")
    (admin / "locked").write_text("initializing\n")
    (origin / "a.txt").write_text("2\n")
    git(origin, "commit", "-qam", "second")
    with pytest.raises(GitError, match="bad object worktrees/killed/HEAD"):
        run_git(["fetch", "-q", "origin"], git_dir=spaces.mirror_path("r"))  # every run hit this

    spaces.sync_mirror("r", str(origin))

    assert spaces.resolve_ref("r", "main") == git(origin, "rev-parse", "HEAD").strip()
    assert not admin.exists() and not broken.exists()
    assert spaces.head(healthy) == commit  # other worktrees untouched
    assert "left half-made by a killed worker" in caplog.text


def test_heads_and_refs_read_from_files_agree_with_git_or_fall_back_to_it(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    mirror = spaces.mirror_path("r")
    commit = spaces.resolve_ref("r", "main")
    assert commit == git(origin, "rev-parse", "HEAD").strip()
    path = spaces.checkout("r", "run", commit)
    assert read_worktree_head(path) == commit  # the run branch's loose ref, no git process
    (path / "a.txt").write_text("2\n")
    git(path, "commit", "-qam", "by the phase")
    moved = git(path, "rev-parse", "HEAD").strip()
    assert read_worktree_head(path) == moved == spaces.head(path)
    git(path, "checkout", "-q", "--detach", commit)
    assert read_worktree_head(path) == commit == spaces.head(path)  # detached: HEAD holds the sha
    git(path, "checkout", "-q", "-B", "autopack/other")
    git(path, "--git-dir", str(mirror), "pack-refs", "--all")
    assert read_worktree_head(path) is None  # packed: git answers
    assert spaces.head(path) == commit
    assert read_loose_ref(mirror, "refs/remotes/origin/main") is None
    assert spaces.resolve_ref("r", "main") == commit  # packed remote ref: git answers
    for hostile in ("refs/../HEAD", "HEAD", "refs/remotes/origin/../../../HEAD"):
        assert read_loose_ref(mirror, hostile) is None


def test_phase_env_contains_only_allowlisted_worker_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = build_env(Settings(), {"MINE": "1"}, {"AUTOPACK_RUN_ID": "r"})
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["LANG"] == "C.UTF-8" and env["MINE"] == "1" and env["AUTOPACK_RUN_ID"] == "r"


def _sync_fetches(
    spaces: Workspaces,
    repo: str,
    source: Path | str,
    want: str | None = None,
    since: float | None = None,
) -> bool:
    """Whether this sync_mirror call ran a fetch (git writes FETCH_HEAD on every fetch)."""
    fetch_head = spaces.mirror_path(repo) / "FETCH_HEAD"
    fetch_head.unlink(missing_ok=True)
    spaces.sync_mirror(repo, str(source), want=want, since=since)
    return fetch_head.exists()


def test_local_origin_with_unchanged_refs_is_not_fetched_again(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    assert _sync_fetches(spaces, "r", origin)
    assert not _sync_fetches(spaces, "r", origin)  # nothing moved: no fetch
    # A new commit on a branch: fetched.
    (origin / "a.txt").write_text("2\n")
    git(origin, "commit", "-qam", "second")
    assert _sync_fetches(spaces, "r", origin)
    assert spaces.resolve_ref("r", "main") == git(origin, "rev-parse", "HEAD").strip()
    assert not _sync_fetches(spaces, "r", origin)
    # A new tag, a new branch in a sub-folder, a deleted branch: each fetched.
    git(origin, "tag", "v2")
    assert _sync_fetches(spaces, "r", origin)
    assert spaces.resolve_ref("r", "v2") == spaces.resolve_ref("r", "main")
    git(origin, "branch", "feature/x")
    assert _sync_fetches(spaces, "r", origin)
    assert spaces.resolve_ref("r", "feature/x") == spaces.resolve_ref("r", "main")
    git(origin, "branch", "-D", "feature/x")
    assert _sync_fetches(spaces, "r", origin)
    with pytest.raises(GitError, match="not found"):
        spaces.resolve_ref("r", "feature/x")  # pruned
    # Refs packed by the origin's gc, then a commit whose ref lives only in packed-refs.
    git(origin, "pack-refs", "--all", "--prune")
    assert _sync_fetches(spaces, "r", origin)
    (origin / "a.txt").write_text("3\n")
    git(origin, "commit", "-qam", "third")
    git(origin, "pack-refs", "--all", "--prune")
    assert _sync_fetches(spaces, "r", origin)
    assert spaces.resolve_ref("r", "main") == git(origin, "rev-parse", "HEAD").strip()
    assert not _sync_fetches(spaces, "r", origin)


def test_a_failed_fetch_is_made_again_next_time(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    (origin / "a.txt").write_text("2\n")
    git(origin, "commit", "-qam", "second")
    objects = origin / ".git" / "objects"
    objects.rename(origin / ".git" / "objects-away")  # the origin is unreadable for a moment
    with pytest.raises(GitError):
        spaces.sync_mirror("r", str(origin))
    (origin / ".git" / "objects-away").rename(objects)
    assert _sync_fetches(spaces, "r", origin)
    assert spaces.resolve_ref("r", "main") == git(origin, "rev-parse", "HEAD").strip()


def test_a_commit_the_mirror_holds_needs_no_fetch_whatever_the_origin(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    url = f"file://{origin}"  # a URL is never fingerprinted: a plain sync always fetches
    assert _sync_fetches(spaces, "u", url)
    first = spaces.resolve_ref("u", "main")
    assert _sync_fetches(spaces, "u", url)
    assert not _sync_fetches(spaces, "u", url, want=first)
    assert _sync_fetches(spaces, "u", url, want="main")  # a branch may have moved
    assert _sync_fetches(spaces, "u", url, want=first[:12])  # only a full id is trusted
    (origin / "a.txt").write_text("2\n")
    git(origin, "commit", "-qam", "second")
    second = git(origin, "rev-parse", "HEAD").strip()
    assert _sync_fetches(spaces, "u", url, want=second)  # not in the mirror yet
    assert spaces.resolve_ref("u", second) == second
    assert not _sync_fetches(spaces, "u", url, want=second)


def test_runs_that_started_before_a_fetch_began_share_it(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    url = f"file://{origin}"  # a URL: only the shared-fetch rule can spare a fetch
    run_a_started = time.time()
    run_b_started = time.time()
    assert _sync_fetches(spaces, "u", url, since=run_a_started)  # run A fetches
    # Run B started before A's fetch began: A's fetch is as new as B needs.
    assert not _sync_fetches(spaces, "u", url, since=run_b_started)
    # A run that started after the last fetch began fetches, and sees what was pushed meanwhile.
    (origin / "a.txt").write_text("2\n")
    git(origin, "commit", "-qam", "second")
    assert _sync_fetches(spaces, "u", url, since=time.time())
    assert spaces.resolve_ref("u", "main") == git(origin, "rev-parse", "HEAD").strip()
    assert _sync_fetches(spaces, "u", url)  # no start time given: always fetched
    # An unreadable record is no record: fetched.
    (spaces.mirror_path("u") / FETCH_STATE_FILE).write_text("{not json")
    assert _sync_fetches(spaces, "u", url, since=run_a_started)


def test_checkout_adopts_the_spare_and_matches_a_fresh_checkout(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n", "gone.txt": "x\n"})
    spaces.sync_mirror("r", str(origin))
    old = spaces.resolve_ref("r", "main")
    spaces.prepare_spare("r", old)
    spaces.prepare_spare("r", old)  # one is ready: nothing more
    spare = spaces.spare_path("r")
    assert (spare / "a.txt").read_text() == "1\n"
    # The origin moves on before the next run: the spare is switched to the run's commit.
    (origin / "a.txt").write_text("2\n")
    (origin / "new.txt").write_text("n\n")
    git(origin, "rm", "-q", "gone.txt")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "second")
    spaces.sync_mirror("r", str(origin))
    new = spaces.resolve_ref("r", "main")
    path = spaces.checkout("r", "run-1", new)
    assert not spare.exists()
    assert sorted(p.name for p in path.iterdir() if p.name != ".git") == ["a.txt", "new.txt"]
    assert (path / "a.txt").read_text() == "2\n"
    assert git(path, "status", "--porcelain") == ""
    assert git(path, "symbolic-ref", "HEAD").strip() == f"refs/heads/{run_branch('run-1')}"
    assert spaces.head(path) == new
    listed = git(spaces.mirror_path("r"), "worktree", "list")
    assert str(path) in listed and str(spare) not in listed
    # Without a spare the run checks out afresh.
    assert spaces.checkout("r", "run-2", new).exists()


def test_a_spare_that_cannot_be_used_is_replaced_by_a_fresh_checkout(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    spaces.prepare_spare("r", commit)
    spare = spaces.spare_path("r")
    shutil.rmtree(spare)
    spare.mkdir()  # a plain folder where the spare was: git knows no worktree there
    (spare / "junk.txt").write_text("?\n")
    path = spaces.checkout("r", "run-1", commit)
    assert not spare.exists()
    assert (path / "a.txt").read_text() == "1\n" and not (path / "junk.txt").exists()
    assert git(path, "status", "--porcelain") == ""
    assert str(spare) not in git(spaces.mirror_path("r"), "worktree", "list")


def test_a_finished_worktree_becomes_the_spare_and_leaves_nothing_of_its_run(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n", ".gitignore": "build/\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    mirror = spaces.mirror_path("r")
    path = spaces.checkout("r", "run-1", commit)
    # What a run leaves: a change it committed, one it did not, untracked and ignored files.
    (path / "done.txt").write_text("committed\n")
    spaces.commit_checkpoint(path, "phase one")
    (path / "a.txt").write_text("changed, not committed\n")
    (path / "scratch.txt").write_text("untracked\n")
    (path / "build").mkdir()
    (path / "build" / "out.o").write_text("ignored\n")
    assert spaces.recycle("r", "run-1")
    spare = spaces.spare_path("r")
    assert not path.exists() and spare.is_dir()
    assert not (spare / "scratch.txt").exists() and not (spare / "build").exists()
    listed = git(mirror, "worktree", "list", "--porcelain")
    assert f"worktree {spare}\n" in listed and str(path) not in listed
    assert "detached" in listed.split(f"worktree {spare}\n")[1].split("\n\n")[0]
    git(mirror, "branch", "-D", run_branch("run-1"))  # the run's branch is checked out nowhere
    # The next run takes the spare: a checkout of its commit like any other.
    again = spaces.checkout("r", "run-2", commit)
    assert not spare.exists()
    assert sorted(p.name for p in again.iterdir() if p.name != ".git") == [".gitignore", "a.txt"]
    assert (again / "a.txt").read_text() == "1\n"
    assert git(again, "status", "--porcelain", "--ignored") == ""
    assert git(again, "symbolic-ref", "HEAD").strip() == f"refs/heads/{run_branch('run-2')}"
    assert spaces.head(again) == commit
    # With a spare in place already, a finished worktree is removed.
    spaces.prepare_spare("r", commit)
    assert not spaces.recycle("r", "run-2")
    assert not again.exists() and str(again) not in git(mirror, "worktree", "list")
    assert not spaces.recycle("r", "run-gone")  # nothing on disk: nothing to do


def test_a_worktree_is_moved_only_when_git_would_move_it(
    spaces: Workspaces, make_repo: Callable[..., Path], git: Callable[..., str]
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    mirror = spaces.mirror_path("r")
    spare = spaces.spare_path("r")
    # Locked (as a killed `worktree add` leaves it): not moved; the run checks out afresh.
    spaces.prepare_spare("r", commit)
    git(mirror, "worktree", "lock", str(spare))
    path = spaces.checkout("r", "run-1", commit)
    assert git(path, "status", "--porcelain") == "" and not spare.exists()
    # A .git file pointing outside the mirror's worktrees is not followed.
    path2 = spaces.checkout("r", "run-2", commit)
    (path2 / ".git").write_text(f"gitdir: {path2}\n")
    assert not spaces.recycle("r", "run-2")
    assert not path2.exists() and not spare.exists()
    # The mirror's record follows a moved worktree, so git keeps it through a prune.
    assert spaces.recycle("r", "run-1")
    git(mirror, "worktree", "prune")
    assert f"worktree {spare}\n" in git(mirror, "worktree", "list", "--porcelain")
    assert git(spare, "status", "--porcelain") == ""


def _git_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the git commands the workspace module starts (each still runs for real)."""
    import workers.workspace as module

    calls: list[list[str]] = []

    def recorded(args: list[str], **kwargs: object) -> str:
        calls.append(list(args))
        return run_git(args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "git", recorded)
    return calls


def test_a_clean_spare_at_the_runs_commit_takes_the_runs_branch_without_git(
    spaces: Workspaces,
    make_repo: Callable[..., Path],
    git: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    origin = make_repo({"a.txt": "1\n", ".gitignore": "build/\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    mirror = spaces.mirror_path("r")
    spaces.prepare_spare("r", commit)
    calls = _git_calls(monkeypatch)
    path = spaces.checkout("r", "run-1", commit)
    assert calls == []
    # git sees exactly what `git checkout -B` leaves: the branch at the commit, HEAD on it, clean.
    branch = run_branch("run-1")
    assert git(path, "symbolic-ref", "HEAD").strip() == f"refs/heads/{branch}"
    assert git(mirror, "rev-parse", f"refs/heads/{branch}").strip() == commit
    assert git(path, "status", "--porcelain", "--ignored") == ""
    listed = git(mirror, "worktree", "list", "--porcelain")
    assert f"worktree {path}\nHEAD {commit}\nbranch refs/heads/{branch}\n" in listed
    assert not list(mirror.rglob("*.lock"))
    # The run commits on its branch like on any other.
    (path / "b.txt").write_text("new\n")
    head = spaces.commit_checkpoint(path, "phase one")
    assert git(mirror, "rev-parse", f"refs/heads/{branch}").strip() == head != commit
    # Its worktree, with a tracked change, an untracked and an ignored file, becomes the spare
    # at the commit the next run starts from: clean, so that run takes it without git too.
    (path / "a.txt").write_text("changed\n")
    (path / "scratch.txt").write_text("untracked\n")
    (path / "build").mkdir()
    (path / "build" / "out.o").write_text("ignored\n")
    assert spaces.recycle("r", "run-1", commit)
    calls.clear()
    again = spaces.checkout("r", "run-2", commit)
    assert calls == []
    assert sorted(p.name for p in again.iterdir() if p.name != ".git") == [".gitignore", "a.txt"]
    assert (again / "a.txt").read_text() == "1\n"
    assert git(again, "status", "--porcelain", "--ignored") == ""
    assert git(again, "symbolic-ref", "HEAD").strip() == f"refs/heads/{run_branch('run-2')}"
    assert git(mirror, "rev-parse", f"refs/heads/{branch}").strip() == head  # run-1's, kept


def test_a_worktree_left_as_checked_out_becomes_the_spare_without_git(
    spaces: Workspaces,
    make_repo: Callable[..., Path],
    git: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    origin = make_repo({"a.txt": "1\n", ".gitignore": "build/\n", "sub/b.txt": "2\n"})
    spaces.sync_mirror("r", str(origin))
    commit = spaces.resolve_ref("r", "main")
    mirror = spaces.mirror_path("r")
    spare = spaces.spare_path("r")
    path = spaces.checkout("r", "run-1", commit)
    assert tree_status(path).pristine
    calls = _git_calls(monkeypatch)
    assert spaces.recycle("r", "run-1", commit, pristine_at=commit)
    assert calls == []
    # git sees what `git checkout --detach` leaves, and the next run takes it without git too.
    listed = git(mirror, "worktree", "list", "--porcelain")
    assert f"worktree {spare}\nHEAD {commit}\ndetached\n" in listed
    assert not list(mirror.rglob("*.lock"))
    again = spaces.checkout("r", "run-2", commit)
    assert calls == []
    assert git(again, "status", "--porcelain", "--ignored") == ""
    # An ignored file makes it not pristine; an empty folder git does not see, the recycle does.
    (again / "build").mkdir()
    (again / "build" / "out.o").write_text("ignored\n")
    status = tree_status(again)
    assert status.ignored and status.changes == [] and not status.pristine
    (again / "build" / "out.o").unlink()
    (again / "build").rmdir()
    (again / "sub" / "empty" / "deeper").mkdir(parents=True)
    assert tree_status(again).pristine
    assert spaces.recycle("r", "run-2", commit, pristine_at=commit)
    assert [c[0] for c in calls] == ["checkout", "clean"]
    assert not (spare / "sub" / "empty").exists() and (spare / "sub" / "b.txt").exists()
    # Pristine at another commit than the spare's (the run's checkpoint): git switches it.
    path = spaces.checkout("r", "run-3", commit)
    (path / "c.txt").write_text("3\n")
    checkpoint = spaces.commit_checkpoint(path, "phase one")
    assert tree_status(path).pristine
    calls.clear()
    assert spaces.recycle("r", "run-3", commit, pristine_at=checkpoint)
    assert [c[0] for c in calls] == ["checkout", "clean"]
    assert not (spare / "c.txt").exists() and spaces.head(spare) == commit
    assert git(spare, "status", "--porcelain", "--ignored") == ""


def test_a_spare_is_switched_by_git_when_the_branch_exists_or_the_commit_differs(
    spaces: Workspaces,
    make_repo: Callable[..., Path],
    git: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    origin = make_repo({"a.txt": "1\n"})
    spaces.sync_mirror("r", str(origin))
    old = spaces.resolve_ref("r", "main")
    mirror = spaces.mirror_path("r")
    # A resumed run's branch exists already, packed: git moves it to the commit.
    path = spaces.checkout("r", "run-1", old)
    (path / "b.txt").write_text("b\n")
    checkpoint = spaces.commit_checkpoint(path, "phase one")
    spaces.remove("r", "run-1")
    git(mirror, "pack-refs", "--all")
    assert not (mirror / "refs" / "heads" / run_branch("run-1")).exists()
    spaces.prepare_spare("r", old)
    calls = _git_calls(monkeypatch)
    path = spaces.checkout("r", "run-1", checkpoint)
    assert [c[0] for c in calls] == ["checkout"]
    assert spaces.head(path) == checkpoint and (path / "b.txt").exists()
    assert git(path, "symbolic-ref", "HEAD").strip() == f"refs/heads/{run_branch('run-1')}"
    spaces.remove("r", "run-1")
    # A spare at another commit than the run's: git switches it.
    spaces.prepare_spare("r", checkpoint)
    calls.clear()
    path = spaces.checkout("r", "run-2", old)
    assert [c[0] for c in calls] == ["checkout"]
    assert spaces.head(path) == old and not (path / "b.txt").exists()
    assert git(path, "status", "--porcelain") == ""
    # A branch lock held by another writer: the fast path steps aside and git is asked.
    spaces.prepare_spare("r", old)
    lock = mirror / "refs" / "heads" / f"{run_branch('run-3')}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    calls.clear()
    with pytest.raises(GitError):  # git refuses too, and says why
        spaces.checkout("r", "run-3", old)
    assert lock.exists()
