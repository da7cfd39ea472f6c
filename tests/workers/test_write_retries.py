"""Ledger writes ride out a database outage (real PostgreSQL behind a cuttable TCP proxy)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import make_engine, make_session_factory, transaction
from shared.errors import CancelRequested, LeaseLost
from shared.models import Attempt, AttemptLog, Phase, Run
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.runs.states import AttemptStatus, RunStatus
from shared.settings import Settings
from tests.conftest import wait_until
from tests.faults import TcpProxy
from workers import leases
from workers.executor import RunExecutor
from workers.leases import Lease
from workers.ledger import AttemptOutcome, Ledger


@pytest.fixture
def proxied(
    settings: Settings, sessions: sessionmaker[Session]
) -> Iterator[tuple[TcpProxy, sessionmaker[Session]]]:
    """A cuttable proxy in front of the session database, and sessions that go through it."""
    url = make_url(settings.effective_database_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = settings.model_copy(
            update={"database_url": url.set(port=proxy.port).render_as_string(hide_password=False)}
        )
        engine = make_engine(through)
        try:
            yield proxy, make_session_factory(engine)
        finally:
            engine.dispose()


@pytest.fixture
def lease(sessions: sessionmaker[Session], settings: Settings, tmp_path: Path) -> Lease:
    """A run of one phase, leased for a minute."""
    name = f"retry-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(tmp_path))
        spec = RunCreate.model_validate(
            {"repo": name, "goal": "g", "phases": [{"id": "a", "run": "true"}]}
        )
        run_id = service.submit(session, settings, spec).run.id
    with transaction(sessions) as session:
        held = leases.acquire(session, run_id, "A", 60)
    assert held is not None
    return held


def test_write_is_retried_with_backoff_until_the_database_is_back(
    proxied: tuple[TcpProxy, sessionmaker[Session]],
    sessions: sessionmaker[Session],
    lease: Lease,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, through = proxied
    ledger = Ledger(through, lease, retry_s=30)
    phase_pk = _phase_pk(sessions, lease.run_id)
    ledger.record_drift(phase_pk, 0.1, False)  # a pooled connection now exists; the cut resets it
    proxy.cut()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            ledger.set_base("b" * 40)  # kept, and written with the next fenced write
            ledger.record_drift(phase_pk, 0.5, True)
        except BaseException as error:  # reported to the test thread
            errors.append(error)

    caplog.set_level(logging.INFO, logger="workers.ledger")
    writer = threading.Thread(target=write)
    writer.start()
    wait_until(lambda: proxy.refused >= 3, timeout=30, what="reconnects refused during the outage")
    proxy.restore()
    writer.join(timeout=30)
    assert not writer.is_alive() and errors == []
    with sessions() as session:
        assert session.scalar(select(Run.base_commit).where(Run.id == lease.run_id)) == "b" * 40
        assert session.scalar(select(Phase.drift_score).where(Phase.pk == phase_pk)) == 0.5
    warnings = [
        r for r in caplog.records if r.name == "workers.ledger" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1 and "database unreachable" in warnings[0].getMessage()
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_write_gives_up_after_its_retry_budget(
    proxied: tuple[TcpProxy, sessionmaker[Session]],
    sessions: sessionmaker[Session],
    lease: Lease,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, through = proxied
    phase_pk = _phase_pk(sessions, lease.run_id)
    proxy.cut()
    with pytest.raises(OperationalError):
        Ledger(through, lease, retry_s=0.5).record_drift(phase_pk, 0.5, True)
    assert proxy.refused >= 2  # it did retry before giving up
    assert "gave up writing the phase's drift score" in caplog.text


def test_base_commit_is_written_with_the_next_fenced_write(
    sessions: sessionmaker[Session], lease: Lease
) -> None:
    ledger = Ledger(sessions, lease)
    ledger.set_base("d" * 40)

    def base() -> str | None:
        with sessions() as session:
            return session.scalar(select(Run.base_commit).where(Run.id == lease.run_id))

    assert base() is None  # not yet: no transaction of its own
    with pytest.raises(RuntimeError), ledger.fenced():
        raise RuntimeError("the write failed")
    assert base() is None  # rolled back with it, and still pending
    ledger.record_drift(_phase_pk(sessions, lease.run_id), 0.2, False)
    assert base() == "d" * 40


def _outcome(status: AttemptStatus, log: Path) -> AttemptOutcome:
    return AttemptOutcome(
        status=status,
        exit_code=0 if status == AttemptStatus.SUCCEEDED else 1,
        signal=None,
        failure_class=None,
        failure_reason=None,
        output_tail="",
        log_path=str(log),
        log_content="out\n",
        log_truncated=False,
        log_size=4,
    )


def _phase_pk(sessions: sessionmaker[Session], run_id: str) -> int:
    with sessions() as session:
        pk = session.scalar(select(Phase.pk).where(Phase.run_id == run_id))
    assert pk is not None
    return pk


def test_retried_attempt_writes_are_idempotent(
    sessions: sessionmaker[Session], lease: Lease, tmp_path: Path
) -> None:
    """A retry after a commit that landed (only its reply was lost) writes nothing twice."""
    ledger = Ledger(sessions, lease)
    phase_pk = _phase_pk(sessions, lease.run_id)
    first = ledger.start_attempt(phase_pk, 1, ["false"], "host")
    assert ledger.start_attempt(phase_pk, 1, ["false"], "host") == first
    ledger.finish_attempt(first, _outcome(AttemptStatus.FAILED, tmp_path / "1.log"))
    ledger.finish_attempt(first, _outcome(AttemptStatus.FAILED, tmp_path / "1.log"))
    second = ledger.start_attempt(phase_pk, 2, ["true"], "host")
    ledger.finish_attempt(second, _outcome(AttemptStatus.SUCCEEDED, tmp_path / "2.log"))
    ledger.phase_succeeded(phase_pk, "d" * 40)
    ledger.finish_attempt(second, _outcome(AttemptStatus.SUCCEEDED, tmp_path / "2.log"))
    ledger.phase_succeeded(phase_pk, "d" * 40)
    with sessions() as session:
        attempts = session.scalars(
            select(Attempt).where(Attempt.phase_pk == phase_pk).order_by(Attempt.number)
        ).all()
        assert [(a.id, a.status) for a in attempts] == [(first, "failed"), (second, "succeeded")]
        assert session.get(AttemptLog, first) is not None
        assert session.get(AttemptLog, second) is not None


def test_succeeded_attempt_is_recorded_with_its_phase_outcome(
    sessions: sessionmaker[Session], lease: Lease, tmp_path: Path
) -> None:
    """A worker dying between an attempt's success and its phase's leaves no succeeded attempt
    on a phase that runs again: both are written in one transaction."""
    ledger = Ledger(sessions, lease)
    phase_pk = _phase_pk(sessions, lease.run_id)
    attempt_id = ledger.start_attempt(phase_pk, 1, ["true"], "host")
    ledger.finish_attempt(attempt_id, _outcome(AttemptStatus.SUCCEEDED, tmp_path / "1.log"))

    def status() -> tuple[str | None, str | None]:
        with sessions() as session:
            attempt, phase = session.get(Attempt, attempt_id), session.get(Phase, phase_pk)
            assert attempt is not None and phase is not None
            return attempt.status, phase.status

    assert status() == ("running", "running")  # dying here: the attempt is recorded lost
    ledger.phase_succeeded(phase_pk, "e" * 40)
    assert status() == ("succeeded", "succeeded")


PROJECT = {
    "pyproject.toml": '[project]\nname = "calc"\nversion = "0.1"\n',
    "calc.py": "def add(a, b):\n    return a + b\n",
}


def test_telemetry_write_failure_never_fails_the_run(
    sessions: sessionmaker[Session],
    settings: Settings,
    make_repo: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database refuses the plan's metrics row; the run still succeeds."""
    origin = make_repo(PROJECT, name=f"o-{uuid.uuid4().hex[:6]}")
    name = f"telemetry-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(origin))
        run_id = service.submit(
            session,
            settings,
            RunCreate.model_validate(
                {
                    "repo": name,
                    "goal": "note the check",
                    "plan": "1. Note the check in `NOTES.md`: `echo checked > NOTES.md`",
                }
            ),
        ).run.id
    function = f"refuse_{run_id.replace('-', '_')}"
    with transaction(sessions) as session:  # a real database error, for this run's rows only
        session.execute(
            text(
                f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'metrics store refused the row'; END $$"
            )
        )
        session.execute(
            text(
                f"CREATE TRIGGER {function} BEFORE INSERT ON phase6_metrics FOR EACH ROW "
                f"WHEN (NEW.run_id = '{run_id}') EXECUTE FUNCTION {function}()"
            )
        )
    try:
        assert RunExecutor(settings, sessions, "w").execute(run_id) == "succeeded"
    finally:
        with transaction(sessions) as session:
            session.execute(text(f"DROP TRIGGER {function} ON phase6_metrics"))
            session.execute(text(f"DROP FUNCTION {function}()"))
    with sessions() as session:
        run = repository.get_run_detail(session, run_id)
        assert run.status == "succeeded", run.failure_reason
        assert [p.status for p in run.phases] == ["succeeded"]
    assert "could not record the plan's metrics" in caplog.text  # the row was refused


def test_last_phase_success_is_written_with_the_runs_outcome(
    sessions: sessionmaker[Session], lease: Lease
) -> None:
    ledger = Ledger(sessions, lease)
    phase_pk = _phase_pk(sessions, lease.run_id)

    def recorded() -> tuple[str, str | None, str | None]:
        with sessions() as session:
            phase = session.get(Phase, phase_pk)
            run = session.get(Run, lease.run_id)
            assert phase is not None and run is not None
            return phase.status, phase.checkpoint_commit, run.status

    ledger.phase_succeeded(phase_pk, "e" * 40, last=True)
    assert recorded() == ("pending", None, "running")  # as if the worker died here: runs again
    ledger.finish_run(RunStatus.SUCCEEDED, result_commit="e" * 40)
    assert recorded() == ("succeeded", "e" * 40, "succeeded")


def test_no_attempt_starts_once_cancellation_is_requested(
    sessions: sessionmaker[Session], lease: Lease
) -> None:
    """The cancel check and the attempt's start are one transaction: nothing starts after it."""
    ledger = Ledger(sessions, lease)
    phase_pk = _phase_pk(sessions, lease.run_id)
    with transaction(sessions) as session:
        session.execute(update(Run).where(Run.id == lease.run_id).values(cancel_requested=True))
    with pytest.raises(CancelRequested):
        ledger.start_attempt(phase_pk, 1, ["true"], "host")
    assert ledger.cancel_requested
    with sessions() as session:
        assert session.scalars(select(Attempt).where(Attempt.phase_pk == phase_pk)).all() == []
        phase = session.get(Phase, phase_pk)
        assert phase is not None and phase.status == "pending" and phase.attempts_count == 0


def test_a_run_never_ends_with_an_attempt_or_phase_left_open(
    sessions: sessionmaker[Session], lease: Lease
) -> None:
    """finish_run skips its clean-up writes only when nothing can be left open."""
    ledger = Ledger(sessions, lease)
    phase_pk = _phase_pk(sessions, lease.run_id)
    # An attempt started and never recorded (an internal error between its end and its phase's):
    # even a run ended as succeeded leaves neither it nor its phase running.
    attempt_id = ledger.start_attempt(phase_pk, 1, ["true"], "host")
    ledger.finish_run(RunStatus.SUCCEEDED, result_commit="e" * 40)
    with sessions() as session:
        attempt = session.get(Attempt, attempt_id)
        phase = session.get(Phase, phase_pk)
        run = session.get(Run, lease.run_id)
        assert attempt is not None and phase is not None and run is not None
        assert attempt.status == "failed" and attempt.finished_at is not None
        assert attempt.failure_reason == (
            "the run ended (succeeded) before this attempt was recorded"
        )
        assert phase.status == "failed" and run.status == "succeeded"
        assert run.lease_owner is None and run.finished_at is not None


def test_the_runs_end_is_fenced_and_writes_the_pending_base(
    sessions: sessionmaker[Session], lease: Lease
) -> None:
    ledger = Ledger(sessions, lease)
    phase_pk = _phase_pk(sessions, lease.run_id)
    ledger.set_base("b" * 40)  # resolved, and not yet written by any other write
    ledger.phase_succeeded(phase_pk, "c" * 40, last=True)
    ledger.finish_run(RunStatus.SUCCEEDED, result_commit="c" * 40, diffstat="1 file")
    with sessions() as session:
        run = session.get(Run, lease.run_id)
        phase = session.get(Phase, phase_pk)
        assert run is not None and phase is not None
        assert (run.status, run.base_commit, run.checkpoint_commit) == (
            "succeeded",
            "b" * 40,
            "c" * 40,
        )
        assert (run.result_commit, run.result_diffstat) == ("c" * 40, "1 file")
        assert phase.status == "succeeded" and phase.checkpoint_commit == "c" * 40
        assert run.updated_at == run.finished_at
    # A second end, as by a worker whose lease was taken over meanwhile: refused, nothing written.
    with transaction(sessions) as session:
        session.execute(update(Run).where(Run.id == lease.run_id).values(lease_token=99))
    with pytest.raises(LeaseLost):
        Ledger(sessions, lease).finish_run(RunStatus.FAILED, reason="late")
    with sessions() as session:
        run = session.get(Run, lease.run_id)
        assert run is not None and run.status == "succeeded" and run.failure_reason is None


def test_a_process_group_write_in_flight_is_joined_by_the_next_write(
    proxied: tuple[TcpProxy, sessionmaker[Session]],
    sessions: sessionmaker[Session],
    lease: Lease,
) -> None:
    """record_process_soon returns at once; the next write waits for it and raises its error."""
    proxy, through = proxied
    ledger = Ledger(through, lease)
    phase_pk = _phase_pk(sessions, lease.run_id)
    attempt_id = ledger.start_attempt(phase_pk, 1, ["true"], "host")
    ledger.record_process_soon(attempt_id, 4242)
    ledger.record_drift(phase_pk, 0.3, False)  # joins the write first
    with sessions() as session:
        attempt = session.get(Attempt, attempt_id)
        assert attempt is not None and attempt.pgid == 4242

    # The database is unreachable for the process group's write (no retry budget): the next
    # write, with the database back, raises that error and writes nothing itself.
    proxy.cut()
    ledger.record_process_soon(attempt_id, 4343)
    # Its pooled connection was just cut (or, idle, its ping fails and a reconnect is refused).
    helper = f"autopack-ledger-{lease.run_id}"
    wait_until(
        lambda: not any(t.name == helper for t in threading.enumerate()),
        timeout=10,
        what="the write to fail",
    )
    proxy.restore()
    with pytest.raises(OperationalError):
        ledger.record_drift(phase_pk, 0.9, True)
    with sessions() as session:
        phase = session.get(Phase, phase_pk)
        assert phase is not None and phase.drift_score == 0.3
        attempt = session.get(Attempt, attempt_id)
        assert attempt is not None and attempt.pgid == 4242
    ledger.record_drift(phase_pk, 0.9, True)  # the error was handed over once
    with sessions() as session:
        phase = session.get(Phase, phase_pk)
        assert phase is not None and phase.drift_score == 0.9


def test_the_last_phase_and_its_attempt_end_with_the_run_or_not_at_all(
    sessions: sessionmaker[Session], lease: Lease, tmp_path: Path
) -> None:
    """The run's end carries its last phase's success and that phase's succeeded attempt (one
    statement on PostgreSQL): written together when the run ends, and only then."""

    def ended(run_id: str, phase_pk: int, attempt_id: int) -> tuple[str, str, str, bool]:
        with sessions() as session:
            run = session.get(Run, run_id)
            phase = session.get(Phase, phase_pk)
            attempt = session.get(Attempt, attempt_id)
            assert run is not None and phase is not None and attempt is not None
            log = session.get(AttemptLog, attempt_id) is not None
            return run.status, phase.status, attempt.status, log

    def ready(held: Lease) -> tuple[Ledger, int, int]:
        ledger = Ledger(sessions, held)
        phase_pk = _phase_pk(sessions, held.run_id)
        attempt_id = ledger.start_attempt(phase_pk, 1, ["true"], "host")
        ledger.finish_attempt(attempt_id, _outcome(AttemptStatus.SUCCEEDED, tmp_path / "a.log"))
        ledger.phase_succeeded(phase_pk, "f" * 40, last=True)
        return ledger, phase_pk, attempt_id

    # The lease was taken over before the end: nothing of it is written.
    ledger, phase_pk, attempt_id = ready(lease)
    with transaction(sessions) as session:
        session.execute(update(Run).where(Run.id == lease.run_id).values(lease_token=99))
    with pytest.raises(LeaseLost):
        ledger.finish_run(RunStatus.SUCCEEDED, result_commit="f" * 40)
    assert ended(lease.run_id, phase_pk, attempt_id) == ("running", "running", "running", False)

    # A cancel request arrived while the run was finishing: it ends cancelled, as asked, and the
    # phase's success and its attempt are still recorded.
    with transaction(sessions) as session:
        session.execute(update(Run).where(Run.id == lease.run_id).values(lease_token=lease.token))
    ledger, phase_pk, attempt_id = ready(lease)
    with transaction(sessions) as session:
        session.execute(
            update(Run)
            .where(Run.id == lease.run_id)
            .values(status=RunStatus.CANCELLING, cancel_requested=True)
        )
    ledger.finish_run(RunStatus.SUCCEEDED, result_commit="f" * 40)
    assert ended(lease.run_id, phase_pk, attempt_id) == (
        "cancelled",
        "succeeded",
        "succeeded",
        True,
    )
    with sessions() as session:
        run = session.get(Run, lease.run_id)
        assert run is not None and run.checkpoint_commit == "f" * 40
        assert run.lease_owner is None and run.failure_reason == "cancelled by request"
