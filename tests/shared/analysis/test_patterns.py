"""Pattern expansion over error_logs filled by real failing runs of the in-process executor."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from shared import repos
from shared.analysis import PatternGroup, analyze_uncaught, group_signature
from shared.db import transaction
from shared.failures import compute_signature, normalize_error_message
from shared.models import ErrorLog
from shared.runs import service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from workers.executor import RunExecutor

OPEN_MISSING = "python3 -c \"import os; open('/tmp/x-' + os.urandom(4).hex())\""
MISSING_COMMAND = "nosuchcommand_xyz --flag"
# A moment no real run has rows at, for hand-written rows that must not mix with real ones.
LONG_AGO = datetime(2001, 1, 1, tzinfo=UTC)


def check_script(blank_lines: int) -> str:
    """A script whose assertion names its own file and line, which differ per copy."""
    return (
        "import sys\n"
        + "\n" * blank_lines
        + "x = 1\n"
        + "assert x == 2, f'x should be two at {__file__}:{sys._getframe().f_lineno}'\n"
    )


def make_origin(path: Path, files: dict[str, str]) -> Path:
    """A git repository with files committed on main."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    path.mkdir(parents=True)
    for rel, content in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(content)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    return path


def execute(
    settings: Settings, sessions: sessionmaker[Session], repo: str, phases: list[dict[str, Any]]
) -> str:
    """Submit a run and execute it in-process with the real executor; returns its id."""
    spec = RunCreate.model_validate({"repo": repo, "goal": "make it pass", "phases": phases})
    with transaction(sessions) as session:
        run_id = service.submit(session, settings, spec).run.id
    assert RunExecutor(settings, sessions, "w").execute(run_id) in {"failed", "succeeded"}
    return run_id


@dataclass
class Corpus:
    """The runs this module executed and the moments between its batches."""

    started: datetime
    opens: list[str] = field(default_factory=list)
    after_opens: datetime = LONG_AGO
    checks: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    scope: str = ""
    finished: datetime = LONG_AGO

    def groups(self, session: Session, **filters: Any) -> list[PatternGroup]:
        """analyze_uncaught over this corpus's time window only."""
        filters.setdefault("since", self.started)
        filters.setdefault("until", self.finished)
        return analyze_uncaught(session, **filters)


@pytest.fixture(scope="module")
def corpus(
    settings: Settings, sessions: sessionmaker[Session], tmp_path_factory: pytest.TempPathFactory
) -> Corpus:
    """Failing runs: 5 FileNotFoundError, 3 assertions, 2 missing commands, 1 caught scope violation."""
    files = {f"check_{n}.py": check_script(n) for n in range(3)} | {"src/a.txt": "a\n"}
    origin = make_origin(tmp_path_factory.mktemp("patterns") / "origin", files)
    repo = f"pat-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, repo, str(origin))
    corpus = Corpus(started=datetime.now(UTC))
    for n in range(5):
        phase = "open" if n < 3 else "load"
        corpus.opens.append(execute(settings, sessions, repo, [{"id": phase, "run": OPEN_MISSING}]))
    corpus.after_opens = datetime.now(UTC)
    for n in range(3):
        corpus.checks.append(
            execute(settings, sessions, repo, [{"id": "check", "run": f"python3 check_{n}.py"}])
        )
    # the same missing command at line 1 and at line 3 of the phase's script
    for script in (MISSING_COMMAND, f"true\ntrue\n{MISSING_COMMAND}"):
        corpus.commands.append(execute(settings, sessions, repo, [{"id": "cmd", "run": script}]))
    vandal = 'echo new > src/a.txt; if [ ! -e "$AUTOPACK_WORKTREE/../.tried-$AUTOPACK_RUN_ID" ]; then touch "$AUTOPACK_WORKTREE/../.tried-$AUTOPACK_RUN_ID"; echo vandal >> check_0.py; fi'
    corpus.scope = execute(
        settings, sessions, repo, [{"id": "edit", "run": vandal, "scope": ["src/**"]}]
    )
    corpus.finished = datetime.now(UTC)
    return corpus


def by_type(groups: list[PatternGroup]) -> dict[str, PatternGroup]:
    """Groups keyed by error type (each type forms one group in this corpus)."""
    return {group.error_type: group for group in groups}


def test_analyze_groups_same_error_across_runs(
    corpus: Corpus, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        group = by_type(corpus.groups(session))["file_not_found"]
        rows = session.execute(
            select(ErrorLog.created_at, ErrorLog.message).where(ErrorLog.run_id.in_(corpus.opens))
        ).all()
    assert len({message for _, message in rows}) == 5  # every run missed a different file
    assert group.count == 5 and group.run_ids == tuple(sorted(corpus.opens))
    assert group.phase_ids == ("load", "open")
    assert group.failure_class == "environment"
    assert group.normalized_message == (
        "FileNotFoundError: [Errno 2] No such file or directory: '<path>'"
    )
    assert group.first_seen == min(at for at, _ in rows)
    assert group.last_seen == max(at for at, _ in rows)
    assert group.sample.run_id == corpus.opens[-1] and group.sample.phase_id == "load"
    assert group.sample.message.startswith("FileNotFoundError: [Errno 2]")
    assert "Traceback" in group.sample.excerpt
    assert group.suggested_pattern_id.startswith("file_not_found_")


def test_analyze_groups_assertions_at_different_lines_and_commands_at_different_lines(
    corpus: Corpus, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        groups = by_type(corpus.groups(session))
        messages = session.scalars(
            select(ErrorLog.message).where(ErrorLog.run_id.in_(corpus.checks + corpus.commands))
        ).all()
    assert len(set(messages)) == 5
    assertion, command = groups["assertion_error"], groups["command_not_found"]
    assert (assertion.count, assertion.run_ids) == (3, tuple(sorted(corpus.checks)))
    assert assertion.normalized_message == "AssertionError: x should be two at <path>:<line>"
    assert (command.count, command.run_ids) == (2, tuple(sorted(corpus.commands)))
    assert command.normalized_message.endswith("nosuchcommand_xyz: command not found")


def test_analyze_keeps_stored_signature_of_fresh_rows(
    corpus: Corpus, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        groups = corpus.groups(session)
    for group in groups:
        assert group.stored_signatures == (group.signature,)
        assert group.signature == group_signature(group.failure_class, group.normalized_message)


def test_analyze_assigns_confidence_by_count(
    corpus: Corpus, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        groups = corpus.groups(session)
    assert [(g.error_type, g.count, g.confidence) for g in groups] == [
        ("file_not_found", 5, "high"),
        ("assertion_error", 3, "medium"),
        ("command_not_found", 2, "low"),
    ]


def test_analyze_excludes_failures_hardening_caught(
    corpus: Corpus, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        caught = session.scalars(select(ErrorLog).where(ErrorLog.run_id == corpus.scope)).all()
        groups = corpus.groups(session)
        only_scope_run = analyze_uncaught(session, run_id=corpus.scope)
    assert [(row.hardening_caught, row.pattern_id) for row in caught] == [(True, "scope_mismatch")]
    assert all(corpus.scope not in group.run_ids for group in groups)
    assert all(group.failure_class != "scope" for group in groups)
    assert only_scope_run == []


def test_analyze_filters_by_run(corpus: Corpus, sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        groups = analyze_uncaught(session, run_id=corpus.checks[1])
    [group] = groups
    assert (group.error_type, group.count, group.run_ids) == (
        "assertion_error",
        1,
        (corpus.checks[1],),
    )
    assert group.confidence == "low"


def test_analyze_filters_by_since_and_until(
    corpus: Corpus, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        later = corpus.groups(session, since=corpus.after_opens)
        earlier = corpus.groups(session, until=corpus.after_opens)
        future = analyze_uncaught(session, since=datetime.now(UTC) + timedelta(days=1))
    assert [g.error_type for g in later] == ["assertion_error", "command_not_found"]
    assert [(g.error_type, g.count) for g in earlier] == [("file_not_found", 5)]
    assert future == []


def test_analyze_treats_naive_bounds_as_utc(
    corpus: Corpus, sessions: sessionmaker[Session]
) -> None:
    naive_since = corpus.after_opens.astimezone(UTC).replace(tzinfo=None)
    naive_until = corpus.finished.astimezone(UTC).replace(tzinfo=None)
    with sessions() as session:
        groups = analyze_uncaught(session, since=naive_since, until=naive_until)
    assert [g.error_type for g in groups] == ["assertion_error", "command_not_found"]


def test_analyze_applies_min_count_then_limit(
    corpus: Corpus, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        frequent = corpus.groups(session, min_count=3)
        first = corpus.groups(session, min_count=3, limit=1)
        none = corpus.groups(session, min_count=6)
    assert [g.count for g in frequent] == [5, 3]
    assert [g.error_type for g in first] == ["file_not_found"]
    assert none == []


def test_analyze_rejects_bad_arguments(db: Session) -> None:
    with pytest.raises(ValueError, match="min_count"):
        analyze_uncaught(db, min_count=0)
    with pytest.raises(ValueError, match="limit"):
        analyze_uncaught(db, limit=-1)


def add_row(
    db: Session,
    run_id: str,
    message: str,
    at: datetime,
    *,
    normalized: str | None = None,
    caught: bool = False,
    failure_class: str = "environment",
    phase_id: str = "legacy",
) -> ErrorLog:
    """A hand-written error_logs row; normalized defaults to today's normalization."""
    stored = normalize_error_message(message) if normalized is None else normalized
    row = ErrorLog(
        run_id=run_id,
        phase_id=phase_id,
        attempt=1,
        error_type="file_not_found",
        failure_class=failure_class,
        message=message,
        normalized_message=stored,
        signature=compute_signature(f"{failure_class}:{stored}"),
        sample=f"$ legacy\n{message}",
        hardening_caught=caught,
        created_at=at,
    )
    db.add(row)
    db.flush()
    return row


def test_analyze_regroups_rows_normalized_before_an_improvement(
    corpus: Corpus, db: Session
) -> None:
    first = "FileNotFoundError: [Errno 2] No such file or directory: '/var/cache/a1/build.lock'"
    second = "FileNotFoundError: [Errno 2] No such file or directory: '/srv/other/b2/build.lock'"
    # an older normalizer left paths in place, so the two rows were stored apart
    add_row(db, corpus.opens[0], first, LONG_AGO, normalized=first)
    add_row(db, corpus.opens[1], second, LONG_AGO + timedelta(seconds=1), normalized=second)
    [group] = analyze_uncaught(db, since=LONG_AGO, until=LONG_AGO + timedelta(minutes=1))
    assert group.count == 2 and group.run_ids == tuple(sorted(corpus.opens[:2]))
    assert len(group.stored_signatures) == 2
    assert group.signature not in group.stored_signatures
    assert group.signature == group_signature("environment", normalize_error_message(first))
    assert group.sample.message == second and group.sample.excerpt == f"$ legacy\n{second}"


def test_analyze_sorts_by_count_then_last_seen_then_signature(corpus: Corpus, db: Session) -> None:
    run_id = corpus.opens[0]
    at = LONG_AGO + timedelta(hours=1)
    for n in range(2):
        add_row(db, run_id, "ValueError: frequent thing broke", at + timedelta(seconds=n))
    add_row(db, run_id, "ValueError: old single thing broke", at)
    add_row(db, run_id, "ValueError: recent single thing broke", at + timedelta(seconds=30))
    add_row(db, run_id, "ValueError: tied single thing A broke", at + timedelta(seconds=10))
    add_row(db, run_id, "ValueError: tied single thing B broke", at + timedelta(seconds=10))
    add_row(db, run_id, "ValueError: caught thing broke", at, caught=True)
    groups = analyze_uncaught(db, since=at, until=at + timedelta(minutes=1))
    tied = sorted(
        (g.signature, g.normalized_message) for g in groups if "tied" in g.normalized_message
    )
    assert [g.normalized_message for g in groups] == [
        "ValueError: frequent thing broke",
        "ValueError: recent single thing broke",
        *(message for _, message in tied),
        "ValueError: old single thing broke",
    ]


def test_analyze_separates_failure_classes_with_the_same_message(
    corpus: Corpus, db: Session
) -> None:
    at = LONG_AGO + timedelta(hours=2)
    add_row(db, corpus.opens[0], "boom", at, failure_class="test")
    add_row(db, corpus.opens[0], "boom", at, failure_class="environment")
    groups = analyze_uncaught(db, since=at, until=at + timedelta(minutes=1))
    assert sorted(g.failure_class for g in groups) == ["environment", "test"]
    assert len({g.suggested_pattern_id for g in groups}) == 1


def test_to_dict_is_json_ready(corpus: Corpus, sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        group = corpus.groups(session)[0]
    data = json.loads(json.dumps(group.to_dict()))
    assert set(data) == {
        "signature",
        "stored_signatures",
        "error_type",
        "failure_class",
        "count",
        "confidence",
        "run_ids",
        "phase_ids",
        "first_seen",
        "last_seen",
        "normalized_message",
        "suggested_pattern_id",
        "sample",
    }
    assert set(data["sample"]) == {"run_id", "phase_id", "attempt", "message", "excerpt"}
    assert data["run_ids"] == list(group.run_ids) and data["count"] == group.count
    assert datetime.fromisoformat(data["last_seen"]) == group.last_seen


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """SQL sent through the session engine, with the execution options it ran with."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def record(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        seen.append((sql, dict(context.execution_options)))

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_analyze_streams_only_needed_columns(
    corpus: Corpus,
    sessions: sessionmaker[Session],
    statements: list[tuple[str, dict[str, Any]]],
) -> None:
    with sessions() as session:
        groups = corpus.groups(session)
    queries = [(sql, options) for sql, options in statements if "error_logs" in sql]
    scan, samples = queries
    assert "hardening_caught = false" in scan[0].lower()
    assert "error_logs.sample" not in scan[0] and "error_logs.normalized_message" not in scan[0]
    assert scan[1].get("yield_per") and scan[1].get("stream_results")
    # the 2 KB samples are read for the representatives only
    assert "error_logs.sample" in samples[0] and "IN" in samples[0]
    assert [g.sample.excerpt != "" for g in groups] == [True] * len(groups)
