"""The executor on real PostgreSQL and git: phases, retries, timeouts, checkpoints, takeover."""

from __future__ import annotations

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
from shared.constants import run_branch
from shared.db import transaction
from shared.models import Run, utcnow
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import wait_until
from workers.attempts import NullObserver
from workers.background import InBackground
from workers.executor import RunExecutor
from workers.workspace import Workspaces

Submit = Callable[..., str]


@pytest.fixture
def submit(
    sessions: sessionmaker[Session], settings: Settings, make_repo: Callable[..., Path]
) -> Submit:
    """Register a fresh repository and submit a run against it; returns the run id."""
    origin = make_repo({"README.md": "# demo\n", "src/app.py": "print('hi')\n"})
    name = f"exec-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(origin))

    def do(phases: list[dict[str, Any]], **extra: Any) -> str:
        spec = RunCreate.model_validate(
            {"repo": name, "goal": "test the executor", "phases": phases, **extra}
        )
        with transaction(sessions) as session:
            return service.submit(session, settings, spec).run.id

    return do


def detail(sessions: sessionmaker[Session], run_id: str) -> Run:
    with sessions() as session:
        return repository.get_run_detail(session, run_id)


def test_execute_runs_phases_and_commits_checkpoints(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit, git: Callable[..., str]
) -> None:
    run_id = submit(
        [
            {"id": "write", "run": ["mkdir -p out", "echo hello > out/a.txt"]},
            {"id": "check", "run": "grep -q hello out/a.txt && echo checked"},
        ]
    )
    executor = RunExecutor(settings, sessions, "test-worker")
    assert executor.execute(run_id) == "succeeded"

    run = detail(sessions, run_id)
    assert run.status == "succeeded" and run.finished_at is not None and run.lease_owner is None
    assert [p.status for p in run.phases] == ["succeeded", "succeeded"]
    assert run.result_commit == run.phases[-1].checkpoint_commit
    assert "out/a.txt" in (run.result_diffstat or "")
    mirror = Workspaces(settings).mirror_path(run.repo)
    assert git(mirror, "rev-parse", run_branch(run_id)).strip() == run.result_commit
    assert git(mirror, "show", f"{run.result_commit}:out/a.txt") == "hello\n"
    assert not Workspaces(settings).worktree_path(run_id).exists()
    attempt = run.phases[1].attempts[0]
    assert attempt.exit_code == 0 and "checked" in (attempt.output_tail or "")
    with sessions() as session:
        log = repository.get_attempt_log(session, attempt)
        assert log is not None and "$ grep -q hello out/a.txt" in log.content


def test_execute_again_after_finish_is_a_no_op(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    run_id = submit([{"id": "once", "run": f"echo x >> {counter}"}])
    executor = RunExecutor(settings, sessions, "test-worker")
    assert executor.execute(run_id) == "succeeded"
    assert executor.execute(run_id) is None
    assert counter.read_text() == "x\n"


def test_a_delivery_takes_only_a_run_it_may_start(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit
) -> None:
    """The claim's one-statement path and its general path agree on what a delivery may take."""
    executor = RunExecutor(settings, sessions, "test-worker")
    late = submit([{"id": "a", "run": "true"}], budgets={"max_queue_wait_s": 30})
    in_time = submit([{"id": "a", "run": "true"}], budgets={"max_queue_wait_s": 30})
    held = submit([{"id": "a", "run": "true"}])
    expired = submit([{"id": "a", "run": "true"}])
    now = utcnow()
    with transaction(sessions) as session:
        session.execute(
            update(Run).where(Run.id == late).values(queue_deadline_at=now - timedelta(seconds=1))
        )
        for run_id, expires in ((held, now + timedelta(minutes=5)), (expired, now)):
            session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    status="running",
                    lease_owner="gone",
                    lease_token=1,
                    lease_expires_at=expires - timedelta(seconds=1),
                    started_at=now,
                )
            )
    assert executor.execute(late) is None  # past its queue deadline: ended, never started
    run = detail(sessions, late)
    assert run.status == "timed_out" and run.started_at is None and run.lease_token == 0
    assert [(p.status, p.attempts) for p in run.phases] == [("skipped", [])]
    assert executor.execute(in_time) == "succeeded"
    assert executor.execute(held) is None  # a live lease is left alone
    run = detail(sessions, held)
    assert (run.status, run.lease_owner, run.lease_token) == ("running", "gone", 1)
    assert executor.execute(expired) == "succeeded"  # an expired lease is taken over
    run = detail(sessions, expired)
    assert run.lease_token == 2 and run.started_at == now and run.lease_owner is None


def test_run_whose_repository_was_unregistered_fails_with_the_reason(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit
) -> None:
    run_id = submit([{"id": "a", "run": "true"}])
    with transaction(sessions) as session:
        repos.remove(session, detail(sessions, run_id).repo)
    assert RunExecutor(settings, sessions, "test-worker").execute(run_id) == "failed"
    run = detail(sessions, run_id)
    assert run.failure_reason is not None and "is not registered" in run.failure_reason
    assert run.failure_reason.startswith("workspace: ") and run.started_at is not None
    assert [(p.status, p.attempts) for p in run.phases] == [("skipped", [])]


def test_failing_phase_retries_then_fails_run_and_skips_rest(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit
) -> None:
    run_id = submit(
        [
            {"id": "ok", "run": "true"},
            {"id": "bad", "run": "echo 'boom: broken thing' >&2; exit 3", "max_attempts": 3},
            {"id": "later", "run": "true"},
        ]
    )
    assert RunExecutor(settings, sessions, "test-worker").execute(run_id) == "failed"
    run = detail(sessions, run_id)
    assert run.status == "failed"
    assert "phase bad: exit code 3" in (run.failure_reason or "")
    assert [p.status for p in run.phases] == ["succeeded", "failed", "skipped"]
    attempts = run.phases[1].attempts
    assert [(a.number, a.status, a.exit_code) for a in attempts] == [
        (1, "failed", 3),
        (2, "failed", 3),
        (3, "failed", 3),
    ]
    assert all("boom: broken thing" in (a.output_tail or "") for a in attempts)
    assert run.phases[2].attempts == []
    assert not Workspaces(settings).worktree_path(run_id).exists()


def test_phase_timeout_kills_group_and_marks_attempt_timed_out(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    run_id = submit(
        [
            {
                "id": "slow",
                "run": f"(trap '' TERM; sleep 120) & echo $! > {pids}; sleep 120",
                "timeout_s": 1,
            }
        ]
    )
    assert RunExecutor(settings, sessions, "test-worker").execute(run_id) == "failed"
    attempt = detail(sessions, run_id).phases[0].attempts[0]
    assert attempt.status == "timed_out" and attempt.failure_class == "timeout"
    assert "timed out after 1s" in (attempt.failure_reason or "")
    child = int(pids.read_text())
    wait_until(
        lambda: (
            not Path(f"/proc/{child}").exists()
            or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
        ),
        timeout=10,
        what="the TERM-ignoring child to be killed",
    )


def test_cwd_symlink_escaping_worktree_fails_attempt(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit
) -> None:
    run_id = submit(
        [
            {"id": "link", "run": "ln -s / escape"},
            {"id": "use", "run": "touch pwned", "cwd": "escape/tmp"},
        ]
    )
    assert RunExecutor(settings, sessions, "test-worker").execute(run_id) == "failed"
    phase = detail(sessions, run_id).phases[1]
    assert "outside the worktree" in (phase.failure_reason or "")
    assert not Path("/tmp/pwned").exists()


def test_run_deadline_times_out_run(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit
) -> None:
    run_id = submit(
        [{"id": "slow", "run": "sleep 60", "timeout_s": 600}, {"id": "after", "run": "true"}],
        budgets={"max_duration_s": 1},
    )
    assert RunExecutor(settings, sessions, "test-worker").execute(run_id) == "timed_out"
    run = detail(sessions, run_id)
    assert "max_duration_s of 1s" in (run.failure_reason or "")
    assert run.phases[0].attempts[0].status == "timed_out"
    assert run.phases[1].status == "skipped"


def test_takeover_fences_old_worker_and_resumes_from_checkpoint(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit, tmp_path: Path
) -> None:
    marker, counter = tmp_path / "started", tmp_path / "first-phase-runs"
    run_id = submit(
        [
            {"id": "first", "run": f"echo run >> {counter}; echo one > one.txt"},
            {
                "id": "second",
                "run": 'if [ -e "$MARK" ]; then echo two > two.txt; else touch "$MARK"; sleep 120; fi',
                "env": {"MARK": str(marker)},
                "timeout_s": 300,
            },
        ]
    )
    old_result: list[str | None] = []
    old = threading.Thread(
        target=lambda: old_result.append(
            RunExecutor(settings, sessions, "old-worker").execute(run_id)
        )
    )
    old.start()
    wait_until(marker.exists, timeout=30, what="second phase to start")
    # The old worker's lease runs out as if it had stalled. Its heartbeat thread is not stalled
    # and would renew an expired lease nobody took yet, so the token moves on too (as a takeover
    # does), which leaves it nothing to renew.
    with transaction(sessions) as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(
                lease_expires_at=utcnow() - timedelta(seconds=1), lease_token=Run.lease_token + 1
            )
        )

    assert RunExecutor(settings, sessions, "new-worker").execute(run_id) == "succeeded"
    old.join(timeout=30)
    assert not old.is_alive() and old_result == [None]

    run = detail(sessions, run_id)
    assert run.status == "succeeded" and run.lease_token == 3  # old 1, bumped 2, new worker 3
    assert counter.read_text() == "run\n"  # the first phase did not run again
    assert [(a.number, a.status, a.worker) for a in run.phases[1].attempts] == [
        (1, "lost", "old-worker"),
        (2, "succeeded", "new-worker"),
    ]
    assert [a.lease_token for a in run.phases[1].attempts] == [1, 3]


class CancelAfter(NullObserver):
    """Requests the run's cancellation (as the API does) once the named phase has finished."""

    def __init__(self, sessions: sessionmaker[Session], run_id: str, phase_id: str) -> None:
        self.sessions, self.run_id, self.phase_id = sessions, run_id, phase_id

    def phase_finished(self, phase_id: str, status: str) -> None:
        if phase_id == self.phase_id:
            with transaction(self.sessions) as session:
                service.cancel(session, self.run_id)


def test_cancel_between_phases_starts_no_attempt_of_the_next(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit, tmp_path: Path
) -> None:
    marker = tmp_path / "second-ran"
    run_id = submit([{"id": "first", "run": "true"}, {"id": "second", "run": f"touch {marker}"}])
    executor = RunExecutor(settings, sessions, "test-worker")
    executor.observer = CancelAfter(sessions, run_id, "first")
    assert executor.execute(run_id) == "cancelled"
    run = detail(sessions, run_id)
    assert run.status == "cancelled" and run.failure_reason == "cancelled by request"
    assert [(p.status, len(p.attempts)) for p in run.phases] == [("succeeded", 1), ("cancelled", 0)]
    assert not marker.exists()


def test_background_writes_run_in_order_and_hand_their_error_to_the_waiter() -> None:
    done: list[int] = []
    release = threading.Event()
    background = InBackground("test-writes")

    def slow_first() -> None:
        release.wait(10)
        done.append(1)

    background.submit(slow_first)
    assert done == []  # submit returned while the write is still in progress
    release.set()
    background.submit(lambda: done.append(2))  # waits for the first
    background.wait()
    assert done == [1, 2]

    def fail() -> None:
        raise RuntimeError("lost")

    background.submit(fail)
    with pytest.raises(RuntimeError, match="lost"):
        background.wait()
    background.wait()  # the error was handed over once
    background.submit(fail)
    background.wait(quiet=True)


class SeesSpare(NullObserver):
    """Notes, when each attempt starts, whether the repository's spare checkout is still there."""

    def __init__(self, spare: Path) -> None:
        self.spare = spare
        self.seen: list[bool] = []

    def attempt_started(self, phase_id: str, attempt: int) -> None:
        self.seen.append(self.spare.exists())


def test_a_worker_prepares_a_spare_checkout_and_the_next_run_uses_it(
    sessions: sessionmaker[Session], settings: Settings, submit: Submit
) -> None:
    executor = RunExecutor(settings, sessions, "test-worker", keep_spare=True)
    first = submit([{"id": "write", "run": "echo one > out.txt"}])
    repo = detail(sessions, first).repo
    observer = SeesSpare(Workspaces(settings).spare_path(repo))
    executor.observer = observer
    assert executor.execute(first) == "succeeded"
    assert observer.spare.exists()  # made after the run, for the next one
    second = submit([{"id": "check", "run": "test ! -e out.txt && echo clean"}])
    assert executor.execute(second) == "succeeded"
    assert observer.seen == [False, False]  # the first run had none; the second took it
    run = detail(sessions, second)
    assert "clean" in (run.phases[0].attempts[0].output_tail or "")
    assert run.result_commit == run.base_commit


def test_a_run_that_changed_nothing_is_tidied_up_without_git_and_any_other_is_cleaned(
    sessions: sessionmaker[Session],
    settings: Settings,
    submit: Submit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import workers.workspace as module

    started: list[str] = []
    real_git = module.git

    def recorded(args: list[str], **kwargs: Any) -> str:
        started.append(args[0])
        return real_git(args, **kwargs)

    monkeypatch.setattr(module, "git", recorded)
    executor = RunExecutor(settings, sessions, "test-worker", keep_spare=True)
    leftovers = {
        "nothing": "true",
        "ignored": "mkdir __pycache__ && touch __pycache__/m.pyc",  # a default checkpoint exclude
        "empty folder": "mkdir -p empty/deeper",  # git status never shows it
        "none left": "test ! -e __pycache__ && test ! -e empty && echo tidy",
    }
    tidied_by_git = {}
    for name, command in leftovers.items():
        run_id = submit([{"id": "p", "run": command}])
        started.clear()
        assert executor.execute(run_id) == "succeeded", name
        tidied_by_git[name] = "clean" in started
    assert tidied_by_git == {
        "nothing": False,
        "ignored": True,
        "empty folder": True,
        "none left": False,
    }
    assert "tidy" in (detail(sessions, run_id).phases[0].attempts[0].output_tail or "")
