"""A submission in one statement on PostgreSQL stores exactly what the transaction path does."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.errors import InvalidInput
from shared.models import Phase, Run
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings

# Differ between any two submissions: the run's id and its clock.
VARYING = {"id", "pk", "run_id", "created_at", "updated_at", "enqueued_at", "queue_deadline_at"}


def _spec(repo: str, **extra: Any) -> RunCreate:
    return RunCreate.model_validate(
        {
            "repo": repo,
            "goal": "store me",
            "labels": {"team": "a"},
            "budgets": {"max_queue_wait_s": 60},
            "phases": [
                {"id": "build", "run": "make", "max_attempts": 3, "timeout_s": 90},
                {"id": "check", "name": "Check it", "run": ["true", "echo ok"]},
            ],
            **extra,
        }
    )


def _stored(sessions: sessionmaker[Session], run_id: str) -> tuple[dict[str, Any], list[Any]]:
    with sessions() as session:
        run = session.get(Run, run_id)
        assert run is not None
        phases = session.scalars(
            select(Phase).where(Phase.run_id == run_id).order_by(Phase.position)
        ).all()
        return (
            {c.key: getattr(run, c.key) for c in Run.__table__.columns if c.key not in VARYING},
            [
                {c.key: getattr(p, c.key) for c in Phase.__table__.columns if c.key not in VARYING}
                for p in phases
            ],
        )


@pytest.fixture
def repo(sessions: sessionmaker[Session], tmp_path: Path) -> str:
    name = f"one-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(tmp_path))
    return name


def test_one_statement_stores_what_the_transaction_path_stores(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings, repo: str
) -> None:
    with transaction(sessions) as session:
        by_transaction = service.submit(session, settings, _spec(repo)).run.id
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        submitted = service.submit_in_one_statement(sessions, settings, _spec(repo))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert submitted is not None and submitted.created and len(statements) == 1
    assert _stored(sessions, submitted.run.id) == _stored(sessions, by_transaction)
    # The reply is built from the objects, with the keys the database gave the phases.
    reply = service.run_read(submitted.run)
    with sessions() as session:
        pks = session.scalars(
            select(Phase.pk).where(Phase.run_id == submitted.run.id).order_by(Phase.position)
        ).all()
    assert [phase.pk for phase in submitted.run.phases] == list(pks)
    assert [phase.phase_id for phase in reply.phases] == ["build", "check"]


def test_an_unregistered_repository_stores_nothing_and_names_the_field(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    with sessions() as session:
        before = session.scalar(select(func.count()).select_from(Run))
    with pytest.raises(InvalidInput) as raised:
        service.submit_in_one_statement(sessions, settings, _spec("nobody-registered-this"))
    assert raised.value.field == "repo" and "not registered" in str(raised.value)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == before


def test_a_repository_configured_in_settings_needs_no_row(
    sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    configured = settings.model_copy(update={"repos": {"from-settings": str(tmp_path)}})
    submitted = service.submit_in_one_statement(sessions, configured, _spec("from-settings"))
    assert submitted is not None
    assert len(_stored(sessions, submitted.run.id)[1]) == 2


def test_a_run_without_phases_yet_is_stored_without_any(
    sessions: sessionmaker[Session], settings: Settings, repo: str
) -> None:
    spec = RunCreate.model_validate({"repo": repo, "goal": "g", "plan": "1. list the files"})
    submitted = service.submit_in_one_statement(sessions, settings, spec)
    assert submitted is not None and submitted.run.phases == []
    stored, phases = _stored(sessions, submitted.run.id)
    assert stored["spec"]["plan"] == "1. list the files" and phases == []


def test_a_client_chosen_run_id_takes_the_transaction_path(
    sessions: sessionmaker[Session], settings: Settings, repo: str
) -> None:
    assert service.submit_in_one_statement(sessions, settings, _spec(repo, run_id="mine-1")) is None
