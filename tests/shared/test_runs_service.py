"""Submitting, starting and listing runs against real PostgreSQL (rolled back per test)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.orm import Session

from shared import repos
from shared.errors import Conflict, InvalidInput, NotFound
from shared.models import Attempt, Run, utcnow
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.runs.states import RunStatus
from shared.settings import Settings


@pytest.fixture
def registered(db: Session, tmp_path: Any) -> str:
    repos.add(db, "svc-demo", str(tmp_path))
    return "svc-demo"


def spec(**overrides: Any) -> RunCreate:
    data: dict[str, Any] = {
        "repo": "svc-demo",
        "goal": "g",
        "phases": [{"id": "a", "run": "true"}, {"id": "b", "run": "true"}],
    }
    data.update(overrides)
    return RunCreate.model_validate(data)


def test_submit_stores_run_and_phases_queued(
    db: Session, settings: Settings, registered: str
) -> None:
    submitted = service.submit(db, settings, spec())
    assert submitted.created and submitted.needs_enqueue
    run = repository.get_run_detail(db, submitted.run.id)
    assert run.status == RunStatus.QUEUED
    assert [p.phase_id for p in run.phases] == ["a", "b"]


def test_submit_same_run_id_and_spec_returns_existing(
    db: Session, settings: Settings, registered: str
) -> None:
    first = service.submit(db, settings, spec(run_id="idem-1"))
    again = service.submit(db, settings, spec(run_id="idem-1"))
    assert not again.created and again.run.id == first.run.id


def test_submit_same_run_id_other_spec_conflicts(
    db: Session, settings: Settings, registered: str
) -> None:
    service.submit(db, settings, spec(run_id="idem-2"))
    with pytest.raises(Conflict):
        service.submit(db, settings, spec(run_id="idem-2", goal="another goal"))


def test_submit_unknown_repo_is_invalid_and_writes_nothing(db: Session, settings: Settings) -> None:
    with pytest.raises(InvalidInput) as caught:
        service.submit(db, settings, spec(repo="nope", run_id="never-written"))
    assert caught.value.field == "repo"
    assert db.get(Run, "never-written") is None


def test_start_moves_created_run_to_queued_once(
    db: Session, settings: Settings, registered: str
) -> None:
    created = service.submit(db, settings, spec(start=False))
    assert created.run.status == RunStatus.CREATED and not created.needs_enqueue
    assert service.start(db, created.run.id).status == RunStatus.QUEUED
    with pytest.raises(Conflict):
        service.start(db, created.run.id)


def test_list_runs_filters_and_paginates_newest_first(
    db: Session, settings: Settings, registered: str
) -> None:
    ids = [
        service.submit(db, settings, spec(labels={"batch": "x", "n": str(i)})).run.id
        for i in range(5)
    ]
    service.submit(db, settings, spec(labels={"batch": "y"}))
    seen: list[str] = []
    cursor = None
    while True:
        rows, cursor = repository.list_runs(db, labels={"batch": "x"}, cursor=cursor, limit=2)
        seen += [r.id for r in rows]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    rows, _ = repository.list_runs(db, statuses=["succeeded"], repo=registered)
    assert rows == []


def test_status_of_counts_phases(db: Session, settings: Settings, registered: str) -> None:
    run = service.submit(db, settings, spec()).run
    status = service.status_of(repository.get_run_detail(db, run.id))
    assert status.phases["pending"] == 2
    assert status.percent_complete == 0.0
    assert not status.terminal


def test_narrow_status_read_matches_the_full_run(
    db: Session, settings: Settings, registered: str
) -> None:
    three = [{"id": p, "run": "true"} for p in ("a", "b", "c")]
    run = service.submit(db, settings, spec(phases=three)).run
    states = [
        (RunStatus.QUEUED, ["pending"] * 3, None, None),
        (RunStatus.RUNNING, ["succeeded", "pending", "pending"], None, None),  # between phases
        (RunStatus.RUNNING, ["succeeded", "running", "pending"], None, None),
        (RunStatus.FAILED, ["succeeded", "failed", "skipped"], "phase b: exit 1", "c0ffee"),
    ]
    seen = []
    for run_status, phase_states, reason, commit in states:
        db.execute(
            update(Run)
            .where(Run.id == run.id)
            .values(status=run_status, failure_reason=reason, result_commit=commit)
        )
        for phase, phase_status in zip(run.phases, phase_states, strict=True):
            phase.status = phase_status
        db.flush()
        db.expire_all()
        narrow = service.read_status(db, run.id)
        assert narrow == service.status_of(repository.get_run_detail(db, run.id))
        seen.append((narrow.current_phase, narrow.percent_complete, narrow.terminal))
    assert seen == [(None, 0.0, False), ("b", 33.3, False), ("b", 33.3, False), (None, 66.7, True)]
    assert narrow.failure_reason == "phase b: exit 1" and narrow.result_commit == "c0ffee"
    with pytest.raises(NotFound):
        service.read_status(db, "run-nope")
    # A run whose plan is not yet turned into phases has none.
    plan = "1. Run the tests\n   ```bash\n   true\n   ```\n"
    planned = service.submit(db, settings, spec(phases=[], plan=plan)).run
    db.flush()
    assert repository.get_run_detail(db, planned.id).phases == []
    narrow = service.read_status(db, planned.id)
    assert narrow == service.status_of(repository.get_run_detail(db, planned.id))
    assert narrow.phases["pending"] == 0 and narrow.status == RunStatus.QUEUED


def test_run_not_started_within_queue_wait_times_out(
    db: Session, settings: Settings, registered: str
) -> None:
    waiting = service.submit(db, settings, spec(budgets={"max_queue_wait_s": 30})).run
    patient = service.submit(db, settings, spec()).run
    assert waiting.queue_deadline_at is not None and patient.queue_deadline_at is None
    assert service.expire_queue_waits(db) == []
    db.execute(
        update(Run)
        .where(Run.id == waiting.id)
        .values(queue_deadline_at=utcnow() - timedelta(seconds=1))
    )
    assert service.expire_queue_waits(db) == [waiting.id]
    db.refresh(waiting)
    assert (
        waiting.status == RunStatus.TIMED_OUT
        and waiting.failure_reason == "not started within its max_queue_wait_s"
    )
    assert {p.status for p in repository.get_run_detail(db, waiting.id).phases} == {"skipped"}
    db.refresh(patient)
    assert patient.status == RunStatus.QUEUED


def test_the_run_detail_read_in_one_statement_matches_the_three_statement_read(
    db: Session, settings: Settings, registered: str
) -> None:
    phases = [{"id": name, "run": "true"} for name in ("c", "a", "b")]
    run_id = service.submit(db, settings, spec(phases=phases)).run.id
    stored = repository.get_run_detail(db, run_id)
    # Attempts written out of order, and a phase without any: the read orders them.
    for phase, numbers in zip(stored.phases, ([2, 1, 3], [], [1]), strict=True):
        for number in numbers:
            db.add(
                Attempt(
                    run_id=run_id,
                    phase_pk=phase.pk,
                    number=number,
                    worker="w",
                    lease_token=1,
                    status="failed" if number < 3 else "succeeded",
                )
            )
    db.flush()
    db.expire_all()
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = db.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    try:
        joined = service.run_read(repository.read_run_detail(db, run_id))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1
    db.expire_all()
    assert joined == service.run_read(repository.get_run_detail(db, run_id))
    assert [p.phase_id for p in joined.phases] == ["c", "a", "b"]
    assert [[a.number for a in p.attempts] for p in joined.phases] == [[1, 2, 3], [], [1]]
    with pytest.raises(NotFound):
        repository.read_run_detail(db, "run-missing")
