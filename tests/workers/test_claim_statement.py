"""A delivery's claim on PostgreSQL: the lease and the run with its phases in one round trip."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.db import transaction
from shared.models import Run
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from workers.executor import RunExecutor


def _submit(
    sessions: sessionmaker[Session], settings: Settings, source: Path, phase_ids: list[str]
) -> str:
    name = f"claim-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(source))
        spec: dict[str, Any] = {"repo": name, "goal": "g"}
        if phase_ids:
            spec["phases"] = [{"id": phase_id, "run": "true"} for phase_id in phase_ids]
        else:
            spec["plan"] = "1. list the files"
        return service.submit(session, settings, RunCreate.model_validate(spec)).run.id


@contextmanager
def _round_trips(engine: Engine) -> Iterator[list[tuple[str, bool]]]:
    """Each statement sent while inside, with whether its connection was in autocommit mode
    (no BEGIN before it, no COMMIT after it)."""
    sent: list[tuple[str, bool]] = []

    def record(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(
            (statement.split()[0].upper(), bool(conn.connection.dbapi_connection.autocommit))
        )

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_plain_claim_is_one_statement_reading_the_run_its_url_and_its_phases_in_order(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    run_id = _submit(sessions, settings, tmp_path, ["c", "a", "b"])
    executor = RunExecutor(settings, sessions, "claimer")
    with _round_trips(engine) as sent:
        claim = executor._claim(run_id)
    assert sent == [("WITH", True)]
    assert claim.lease is not None and claim.lease.token == 1 and claim.run is not None
    assert claim.run.id == run_id and claim.run.spec["goal"] == "g"
    assert claim.source == str(tmp_path)
    assert [phase.phase_id for phase in claim.phases] == ["c", "a", "b"]
    assert [phase.position for phase in claim.phases] == [0, 1, 2]
    assert all(phase.attempts == [] and phase.status == "pending" for phase in claim.phases)
    with sessions() as session:
        stored = session.scalars(select(Run).where(Run.id == run_id)).one()
        assert (stored.status, stored.lease_owner, stored.lease_token) == ("running", "claimer", 1)
        assert stored.started_at is not None


def test_a_plain_claim_of_a_run_without_phases_yet_reads_none(
    sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    run_id = _submit(sessions, settings, tmp_path, [])
    claim = RunExecutor(settings, sessions, "claimer")._claim(run_id)
    assert claim.lease is not None and claim.run is not None and claim.run.id == run_id
    assert claim.phases == []


def test_a_claim_of_a_held_run_takes_nothing(
    sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    run_id = _submit(sessions, settings, tmp_path, ["a"])
    assert RunExecutor(settings, sessions, "first")._claim(run_id).lease is not None
    second = RunExecutor(settings, sessions, "second")._claim(run_id)
    assert second.lease is None and second.run is None
    with sessions() as session:
        assert session.scalars(select(Run.lease_owner).where(Run.id == run_id)).one() == "first"
