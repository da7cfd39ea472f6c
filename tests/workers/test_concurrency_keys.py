"""Concurrency keys on real PostgreSQL (and SQLite), Redis and git: limits, FCFS, on_conflict, kicks.

Runs are executed by real RunExecutors in this process; the runs a key lets start are sent through a
real Celery dispatcher to a Redis queue of the test's own, which the test reads to see what was sent.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import CeleryDispatcher
from shared import repos
from shared.db import make_engine, make_session_factory, transaction
from shared.migrations import upgrade
from shared.models import Attempt, Run, utcnow
from shared.runs import concurrency, events, repository, service
from shared.runs.spec import RunCreate
from shared.settings import Settings
from tests.conftest import fresh_database, wait_until
from workers.executor import RunExecutor
from workers.sweeper import kick_waiting_runs, requeue_lost_messages

LONG_AGO = timedelta(days=3650)


@dataclass
class Stack:
    """One backend: settings with a queue of the test's own, sessions, a repository, the broker."""

    settings: Settings
    sessions: sessionmaker[Session]
    repo: str
    broker: redis.Redis
    tmp: Path
    key: str = field(default_factory=lambda: f"key-{uuid.uuid4().hex[:8]}")
    releases: list[Path] = field(default_factory=list)

    def close(self) -> None:
        """Let every blocking phase end (after a failed assertion too) and drop the test's queue."""
        for release in self.releases:
            release.touch()
        self.broker.delete(self.settings.queue)

    def submit(self, phases: list[dict[str, Any]] | None = None, **concurrency: Any) -> str:
        """Submit a run with this test's key; returns its id."""
        spec = RunCreate.model_validate(
            {
                "repo": self.repo,
                "goal": "concurrency keys",
                "concurrency": {"key": self.key, **concurrency},
                "phases": phases or [{"id": "a", "run": "true"}],
            }
        )
        with transaction(self.sessions) as session:
            return service.submit(session, self.settings, spec).run.id

    def executor(self, *, kicks: bool = True, **options: Any) -> RunExecutor:
        """An executor like a worker's (kicks=True: it sends waiting runs when a slot frees)."""
        dispatcher = CeleryDispatcher(self.settings) if kicks else None
        return RunExecutor(
            self.settings,
            self.sessions,
            f"w-{uuid.uuid4().hex[:6]}",
            dispatcher=dispatcher,
            **options,
        )

    def sent(self) -> list[str]:
        """Take every message from the test's queue, oldest first; the run ids they carry."""
        ids = []
        while (raw := self.broker.rpop(self.settings.queue)) is not None:
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            ids.append(str(body[0][0]))
        return ids

    def run(self, run_id: str) -> Run:
        with self.sessions() as session:
            return repository.get_run_detail(session, run_id)

    def status(self, run_id: str) -> str:
        return self.run(run_id).status

    def blocking(self, name: str) -> tuple[list[dict[str, Any]], Path, Path]:
        """A phase that signals it started, then waits for its release file."""
        started, release = self.tmp / f"{name}.started", self.tmp / f"{name}.release"
        command = f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done"
        self.releases.append(release)
        return [{"id": "hold", "run": command, "timeout_s": 120}], started, release

    def attempts(self, run_ids: list[str]) -> list[Attempt]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(Attempt).where(Attempt.run_id.in_(run_ids)).order_by(Attempt.started_at)
                )
            )


class Background:
    """A call in a thread, like a delivery on a worker; result() joins it with a deadline."""

    def __init__(self, call: Callable[[], str | None]) -> None:
        self.value: list[str | None] = []
        self.thread = threading.Thread(target=lambda: self.value.append(call()))
        self.thread.start()

    @classmethod
    def execute(cls, executor: RunExecutor, run_id: str) -> Background:
        return cls(lambda: executor.execute(run_id))

    def result(self, timeout: float = 60) -> str | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "execute() did not return"
        return self.value[0]


def _stack(settings: Settings, sessions: sessionmaker[Session], make_repo: Any, tmp: Path) -> Stack:
    name = f"ck-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        repos.add(session, name, str(make_repo({"README.md": "# keys\n"})))
    return Stack(settings, sessions, name, redis.Redis.from_url(settings.broker_url), tmp)


@pytest.fixture(scope="module")
def quiet_pg(
    settings: Settings, session_tag: str
) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """A PostgreSQL database of this module's own.

    The session database is shared with the session's worker processes, whose sweepers would send
    the runs these tests back-date; here only the tests themselves send anything.
    """
    with fresh_database(f"{session_tag}_ck") as url:
        own = settings.model_copy(update={"database_url": url})
        upgrade(own)
        engine = make_engine(own)
        yield own, make_session_factory(engine)
        engine.dispose()


@pytest.fixture
def pg(
    quiet_pg: tuple[Settings, sessionmaker[Session]],
    make_repo: Callable[..., Path],
    tmp_path: Path,
) -> Iterator[Stack]:
    settings, sessions = quiet_pg
    own = settings.model_copy(update={"queue": f"ck-{uuid.uuid4().hex[:8]}"})
    stack = _stack(own, sessions, make_repo, tmp_path)
    yield stack
    stack.close()


@pytest.fixture
def sqlite(settings: Settings, make_repo: Callable[..., Path], tmp_path: Path) -> Iterator[Stack]:
    """The embedded database: a SQLite file, migrated like `autopack run` does."""
    own = settings.model_copy(
        update={
            "queue": f"ck-{uuid.uuid4().hex[:8]}",
            "database_url": f"sqlite:///{tmp_path / 'embedded.db'}",
            "data_dir": tmp_path / "data",
        }
    )
    upgrade(own)
    engine = make_engine(own)
    stack = _stack(own, make_session_factory(engine), make_repo, tmp_path)
    yield stack
    stack.close()
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def stack(request: pytest.FixtureRequest) -> Stack:
    stack: Stack = request.getfixturevalue("pg" if request.param == "postgresql" else "sqlite")
    return stack


def assert_no_overlap(stack: Stack, run_ids: list[str]) -> None:
    attempts = stack.attempts(run_ids)
    assert {a.run_id for a in attempts} == set(run_ids)
    for earlier, later in itertools.pairwise(attempts):
        assert earlier.finished_at is not None and earlier.finished_at <= later.started_at, (
            f"{earlier.run_id} and {later.run_id} ran at the same time"
        )


def test_limit_one_holds_and_a_finishing_run_sends_the_next(stack: Stack) -> None:
    hold, started, release = stack.blocking("first")
    order = stack.tmp / "order"
    then = [{"id": "a", "run": f'echo "$AUTOPACK_RUN_ID" >> {order}'}]
    first, second, third = stack.submit(hold), stack.submit(then), stack.submit(then)
    executor = stack.executor()

    holding = Background.execute(executor, first)
    wait_until(started.exists, what="the first run to start")
    assert executor.execute(third) is None  # the key is full: it waits, queued
    assert executor.execute(second) is None
    assert [stack.status(r) for r in (first, second, third)] == ["running", "queued", "queued"]
    assert stack.run(second).phases[0].attempts == [] and stack.run(third).phases[0].attempts == []
    assert stack.sent() == []  # nothing could start, so nothing was sent

    release.touch()
    assert holding.result() == "succeeded"
    assert stack.sent() == [second]  # the finishing run sent the oldest waiting run, only it
    assert executor.execute(second) == "succeeded"
    assert stack.sent() == [third]
    assert executor.execute(third) == "succeeded"
    assert stack.sent() == []
    assert order.read_text().split() == [second, third]
    assert_no_overlap(stack, [first, second, third])


def test_a_waiting_run_says_why_until_it_starts_and_its_timeline_keeps_it(stack: Stack) -> None:
    hold, started, release = stack.blocking("holder")
    holder, waiting = stack.submit(hold), stack.submit()
    executor = stack.executor()
    holding = Background.execute(executor, holder)
    wait_until(started.exists, what="the holder to start")
    with stack.sessions() as session:
        assert service.read_status(session, waiting).waiting_reason is None  # not delivered yet
    assert executor.execute(waiting) is None
    expected = f"waiting for concurrency key {stack.key!r}: 1 of 1 slot(s) held ({holder})"
    with stack.sessions() as session:
        assert service.read_status(session, waiting).waiting_reason == expected
        run = repository.get_run_detail(session, waiting)
        assert service.run_read(run).waiting_reason == expected
        assert service.status_of(run).waiting_reason == expected
    release.touch()
    assert holding.result() == "succeeded"
    assert executor.execute(waiting) == "succeeded"
    with stack.sessions() as session:
        run = repository.get_run_detail(session, waiting)
        assert service.read_status(session, waiting).waiting_reason is None
        assert service.run_read(run).waiting_reason is None
        kinds = [(e.kind, e.detail) for e in events.timeline(session, run)]
    assert kinds[:3] == [
        ("run.created", {"repo": stack.repo, "ref": "main", "concurrency_key": stack.key}),
        ("run.waiting", {"reason": expected}),
        ("run.started", {}),
    ]


def test_waiting_runs_start_first_come_first_served(stack: Stack) -> None:
    older, newer = stack.submit(), stack.submit()
    executor = stack.executor()
    # The newer run's message arrives first while the older one waits: it may not overtake.
    assert executor.execute(newer) is None
    assert stack.status(newer) == "queued"
    assert stack.sent() == [older]  # the delivery sent the run that is first in line
    assert executor.execute(older) == "succeeded"
    assert stack.sent() == [newer]
    assert executor.execute(newer) == "succeeded"
    assert_no_overlap(stack, [older, newer])


def test_limit_two_admits_the_two_oldest_of_concurrent_deliveries(pg: Stack) -> None:
    holds = [pg.blocking(f"h{i}") for i in range(2)]
    ids = [pg.submit(h[0], limit=2) for h in holds] + [pg.submit(limit=2) for _ in range(6)]
    barrier = threading.Barrier(len(ids))
    executors = [pg.executor() for _ in ids]

    def deliver(index: int) -> Background:
        def go() -> str | None:
            barrier.wait(timeout=30)  # every delivery at the same moment
            return executors[index].execute(ids[index])

        return Background(go)

    deliveries = [deliver(i) for i in range(len(ids))]
    for delivery in deliveries[2:]:
        assert delivery.result() is None
    for _hold, started, _release in holds:
        wait_until(started.exists, what="the two oldest runs to start")
    assert [pg.status(r) for r in ids] == ["running"] * 2 + ["queued"] * 6
    # A delivery declined while the two oldest were still queued sent them (duplicates are no-ops).
    assert set(pg.sent()) <= {ids[0], ids[1]}

    holds[0][2].touch()
    assert deliveries[0].result() == "succeeded"
    assert pg.sent() == [ids[2]]  # one slot freed: the oldest waiting run
    assert pg.executor().execute(ids[2]) == "succeeded"
    assert pg.sent() == [ids[3]]
    holds[1][2].touch()
    assert deliveries[1].result() == "succeeded"
    # Both slots are free: the two oldest waiting runs (the first was sent already, not yet run).
    assert pg.sent() == [ids[3], ids[4]]
    pending = [ids[3], ids[4]]
    while pending:  # deliver what was sent, as a worker would, until nothing more is sent
        for run_id in pending:
            assert pg.executor().execute(run_id) in ("succeeded", None)
        pending = pg.sent()
    assert [pg.status(r) for r in ids] == ["succeeded"] * len(ids)


def test_cancel_new_ends_the_new_run_naming_the_key(stack: Stack) -> None:
    hold, started, release = stack.blocking("holder")
    marker = stack.tmp / "new-ran"
    holder = stack.submit(hold, on_conflict="cancel_new")
    new = stack.submit([{"id": "a", "run": f"touch {marker}"}], on_conflict="cancel_new")
    executor = stack.executor()

    holding = Background.execute(executor, holder)
    wait_until(started.exists, what="the holder to start")
    assert executor.execute(new) is None
    run = stack.run(new)
    assert run.status == "cancelled" and run.finished_at is not None
    assert stack.key in (run.failure_reason or "") and "cancel_new" in (run.failure_reason or "")
    assert holder in (run.failure_reason or "")
    assert [p.status for p in run.phases] == ["cancelled"] and run.phases[0].attempts == []
    with stack.sessions() as session:
        timeline = events.timeline(session, repository.get_run_detail(session, new))
    assert timeline[0].detail["concurrency_key"] == stack.key
    assert timeline[-1].kind == "run.finished"
    assert timeline[-1].detail["status"] == "cancelled"
    assert stack.key in timeline[-1].detail["reason"]

    release.touch()
    assert holding.result() == "succeeded"
    assert not marker.exists()
    assert executor.execute(new) is None  # a late delivery of the cancelled run does nothing
    assert stack.status(new) == "cancelled" and stack.sent() == []


def test_cancel_running_stops_the_running_run_and_starts_the_new_one(stack: Stack) -> None:
    started = stack.tmp / "old.started"
    forever = f"touch {started}; while true; do sleep 0.1; done"
    old = stack.submit([{"id": "loop", "run": forever, "timeout_s": 600}])
    new = stack.submit(on_conflict="cancel_running")
    executor = stack.executor()

    running = Background.execute(executor, old)
    wait_until(started.exists, what="the old run to start")
    assert executor.execute(new) == "succeeded"
    assert running.result() == "cancelled"
    run = stack.run(old)
    assert run.status == "cancelled"
    assert f"superseded by run {new} on concurrency key {stack.key!r}" in (run.failure_reason or "")
    assert [a.status for a in run.phases[0].attempts] == ["cancelled"]
    assert stack.status(new) == "succeeded"


def test_sweeper_sends_a_waiting_run_whose_slot_freed_without_a_kick(pg: Stack) -> None:
    hold, started, release = pg.blocking("dies-before-kick")
    holder = pg.submit(hold)
    first, second = pg.submit(), pg.submit()
    lone = pg.executor(
        kicks=False
    )  # frees its slot but sends nothing, like a worker that died then
    holding = Background.execute(lone, holder)
    wait_until(started.exists, what="the holder to start")
    assert pg.executor().execute(first) is None and pg.executor().execute(second) is None
    with transaction(pg.sessions) as session:  # their messages are long gone
        session.execute(
            update(Run).where(Run.id.in_([first, second])).values(enqueued_at=utcnow() - LONG_AGO)
        )
    # Only runs of this test are older than the cutoff: the sweep cannot touch other tests' runs.
    sweeping = pg.settings.model_copy(update={"requeue_after_s": (LONG_AGO / 2).total_seconds()})
    dispatcher = CeleryDispatcher(pg.settings)
    assert kick_waiting_runs(pg.sessions, dispatcher, sweeping) == []  # the key is still full

    release.touch()
    assert holding.result() == "succeeded"
    assert pg.sent() == []  # nobody kicked
    assert kick_waiting_runs(pg.sessions, dispatcher, sweeping) == [first]
    assert kick_waiting_runs(pg.sessions, dispatcher, sweeping) == []  # sent once per interval
    assert pg.sent() == [first]
    assert pg.executor().execute(first) == "succeeded"
    assert pg.sent() == [second]
    assert pg.executor().execute(second) == "succeeded"


def test_lost_message_requeue_leaves_runs_waiting_for_their_key_alone(pg: Stack) -> None:
    hold, started, release = pg.blocking("holder")
    holder = pg.submit(hold)
    waiting = pg.submit()
    spec = RunCreate.model_validate(
        {"repo": pg.repo, "goal": "no key", "phases": [{"id": "a", "run": "true"}]}
    )
    with transaction(pg.sessions) as session:
        plain = service.submit(session, pg.settings, spec).run.id
    holding = Background.execute(pg.executor(), holder)
    wait_until(started.exists, what="the holder to start")
    assert pg.executor().execute(waiting) is None
    with transaction(pg.sessions) as session:
        session.execute(
            update(Run).where(Run.id.in_([waiting, plain])).values(enqueued_at=utcnow() - LONG_AGO)
        )
    sweeping = pg.settings.model_copy(update={"requeue_after_s": (LONG_AGO / 2).total_seconds()})
    dispatcher = CeleryDispatcher(pg.settings)
    # An empty queue: the plain run's message was lost; the waiting run has none by design.
    assert requeue_lost_messages(pg.sessions, dispatcher, sweeping, lambda _queue: 0) == [plain]
    assert pg.sent() == [plain]
    release.touch()
    assert holding.result() == "succeeded"
    assert pg.sent() == [waiting]


def test_embedded_mode_waits_in_process_for_the_slot(
    sqlite: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    hold, started, release = sqlite.blocking("embedded")
    first, second = sqlite.submit(hold), sqlite.submit()
    caplog.set_level(logging.INFO, logger="workers.executor")

    holding = Background.execute(sqlite.executor(kicks=False, wait_for_admission=True), first)
    wait_until(started.exists, what="the first run to start")
    waiting = Background.execute(sqlite.executor(kicks=False, wait_for_admission=True), second)
    wait_until(
        lambda: f"run {second} is waiting for concurrency key {sqlite.key!r}" in caplog.text,
        what="the second run to wait for the key",
    )
    assert sqlite.status(second) == "queued"
    release.touch()
    assert holding.result() == "succeeded"
    assert waiting.result() == "succeeded"
    assert_no_overlap(sqlite, [first, second])


def test_admission_queries_use_the_concurrency_key_index(pg: Stack) -> None:
    """The key's holders and waiters are found through the index (migration 0011), not a scan."""
    run_id = pg.submit()
    with transaction(pg.sessions) as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table: force the choice
        compile_pg = session.get_bind().dialect
        for query in (
            concurrency.holders_query(pg.key),
            concurrency.waiters_query(pg.key),
        ):
            sql = str(query.compile(dialect=compile_pg, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(session.scalars(text(f"EXPLAIN {sql}")))
            assert "ix_runs_concurrency_key_status_created_at" in plan, plan
    assert pg.status(run_id) == "queued"
