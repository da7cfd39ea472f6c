"""Leases and fencing on real PostgreSQL: one holder at a time, stale holders write nothing."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.errors import Conflict, LeaseLost
from shared.models import Attempt, Phase, Run, utcnow
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.runs.states import PhaseStatus, RunStatus
from shared.settings import Settings
from workers import leases
from workers.ledger import Ledger
from workers.sweeper import finish_abandoned_cancellations


@pytest.fixture
def run_id(sessions: sessionmaker[Session], settings: Settings, tmp_path: Path) -> str:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(tmp_path))
        spec = RunCreate.model_validate(
            {"repo": name, "goal": "g", "phases": [{"id": "a", "run": "true"}]}
        )
        return service.submit(session, settings, spec).run.id


def expire(sessions: sessionmaker[Session], run_id: str) -> None:
    with transaction(sessions) as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_acquire_twice_while_live_second_gets_nothing(
    sessions: sessionmaker[Session], run_id: str
) -> None:
    with transaction(sessions) as session:
        first = leases.acquire(session, run_id, "A", 60)
    with transaction(sessions) as session:
        second = leases.acquire(session, run_id, "B", 60)
    assert first is not None and first.token == 1
    assert second is None


def test_acquire_concurrently_exactly_one_wins(
    sessions: sessionmaker[Session], run_id: str
) -> None:
    results: list[object] = []
    barrier = threading.Barrier(8)

    def contend(owner: str) -> None:
        barrier.wait()
        with transaction(sessions) as session:
            results.append(leases.acquire(session, run_id, owner, 60))

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([r for r in results if r is not None]) == 1


def test_takeover_after_expiry_fences_out_old_holder(
    sessions: sessionmaker[Session], run_id: str
) -> None:
    with transaction(sessions) as session:
        old = leases.acquire(session, run_id, "A", 60)
    assert old is not None
    old_ledger = Ledger(sessions, old)
    with transaction(sessions) as session:
        phase_pk = session.scalars(select(Phase.pk).where(Phase.run_id == run_id)).one()
    attempt_id = old_ledger.start_attempt(phase_pk, 1, ["true"], "host")
    expire(sessions, run_id)
    with transaction(sessions) as session:
        new = leases.acquire(session, run_id, "B", 60)
    assert new is not None and new.token == old.token + 1

    with pytest.raises(LeaseLost):
        old_ledger.finish_run(RunStatus.SUCCEEDED, result_commit="f" * 40)
    with pytest.raises(LeaseLost):
        old_ledger.phase_failed(phase_pk, "should not be written")
    with pytest.raises(LeaseLost), transaction(sessions) as session:
        leases.renew(session, old, 60)

    with sessions() as session:
        run = session.get(Run, run_id)
        phase = session.get(Phase, phase_pk)
        assert run is not None and phase is not None
        assert (
            run.status == RunStatus.RUNNING and run.lease_owner == "B" and run.result_commit is None
        )
        assert phase.status == PhaseStatus.RUNNING

    lost = Ledger(sessions, new).begin_run()
    assert lost == [("host", None)]
    with sessions() as session:
        attempt = session.get(Attempt, attempt_id)
        assert attempt is not None and attempt.status == "lost"


def test_renew_reports_cancel_request(sessions: sessionmaker[Session], run_id: str) -> None:
    with transaction(sessions) as session:
        lease = leases.acquire(session, run_id, "A", 60)
    assert lease is not None
    with transaction(sessions) as session:
        assert leases.renew(session, lease, 60) is False
        session.execute(update(Run).where(Run.id == run_id).values(cancel_requested=True))
    with transaction(sessions) as session:
        assert leases.renew(session, lease, 60) is True


def test_cancel_transitions_by_state(sessions: sessionmaker[Session], run_id: str) -> None:
    with transaction(sessions) as session:
        lease = leases.acquire(session, run_id, "A", 60)
    assert lease is not None
    with transaction(sessions) as session:
        assert service.cancel(session, run_id).status == RunStatus.CANCELLING
    with transaction(sessions) as session:
        assert (
            service.cancel(session, run_id).status == RunStatus.CANCELLING
        )  # asking twice is fine
    with transaction(sessions) as session:
        assert leases.renew(session, lease, 60) is True  # the worker hears about it
    Ledger(sessions, lease).finish_run(
        RunStatus.SUCCEEDED
    )  # a finish racing the cancel ends cancelled
    with sessions() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.status == RunStatus.CANCELLED
    with pytest.raises(Conflict), transaction(sessions) as session:
        service.cancel(session, run_id)


def test_abandoned_cancellation_is_finished_by_sweeper(
    sessions: sessionmaker[Session], run_id: str
) -> None:
    with transaction(sessions) as session:
        leases.acquire(session, run_id, "dead-worker", 60)
    with transaction(sessions) as session:
        service.cancel(session, run_id)
    assert finish_abandoned_cancellations(sessions) == []  # its worker may still be stopping it
    expire(sessions, run_id)
    assert finish_abandoned_cancellations(sessions) == [run_id]
    with sessions() as session:
        run = session.get(Run, run_id)
        phases = list(session.scalars(select(Phase).where(Phase.run_id == run_id)))
        assert run is not None and run.status == RunStatus.CANCELLED and run.lease_owner is None
        assert [p.status for p in phases] == [PhaseStatus.CANCELLED]
