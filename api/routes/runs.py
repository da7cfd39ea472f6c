"""Routes of the runs resource: submit, list, read, follow, start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from api.deps import CallerDep, DispatcherDep, SessionsDep, SettingsDep, SubmitterDep
from api.dispatch import enqueue_committed
from api.notify import RunNotifications
from shared.db import single_statement, transaction
from shared.errors import InvalidInput, NotFound
from shared.runs import events, repository, service
from shared.runs.events import RunEvent
from shared.runs.schemas import RunPage, RunRead, RunStatusRead, RunSummary
from shared.runs.spec import NAME_PATTERN, RunCreate
from shared.runs.states import RUN_TERMINAL, RunStatus

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/runs", tags=["runs"])


@router.post(
    "",
    status_code=202,
    response_model=RunRead,
    responses={200: {"model": RunRead}, 409: {}, 422: {}},
)
def submit_run(
    spec: RunCreate,
    response: Response,
    sessions: SessionsDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    _caller: SubmitterDep,
) -> RunRead:
    """Store a run and enqueue it; resubmitting the same run_id and spec returns the stored run (200)."""
    submitted = service.submit_in_one_statement(sessions, settings, spec)
    if submitted is None:  # a client-chosen run id, or SQLite
        with transaction(sessions) as session:
            submitted = service.submit(session, settings, spec)
            if not submitted.created:  # the stored run, read in its session
                response.status_code = 200
                return service.run_read(submitted.run)
    if submitted.needs_enqueue:  # first: the reply is not on the run's way to a worker
        enqueue_committed(sessions, dispatcher, submitted.run.id)
    # The run as stored: built from the objects just inserted (their phases known, attempts
    # known empty), which nothing refreshes while a worker may already be changing the row.
    return service.run_read(submitted.run)


@router.get("", response_model=RunPage)
def list_runs(
    sessions: SessionsDep,
    _caller: CallerDep,
    status: Annotated[list[RunStatus], Query()] = [],  # noqa: B006 - FastAPI reads, never mutates
    repo: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    label: Annotated[list[str], Query(description="key=value, repeatable")] = [],  # noqa: B006
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunPage:
    """Runs newest first; follow next_cursor for more."""
    labels = {}
    for item in label:
        key, sep, value = item.partition("=")
        if not sep or not key or "\x00" in item:
            raise InvalidInput(f"label filter {item!r} must be key=value", field="label")
        labels[key] = value
    with sessions() as session:
        rows, next_cursor = repository.list_runs(
            session, statuses=status, repo=repo, labels=labels, cursor=cursor, limit=limit
        )
        return RunPage(items=[RunSummary.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/{run_id}", response_model=RunRead)
def get_run(run_id: str, sessions: SessionsDep, _caller: CallerDep) -> RunRead:
    """A run with its phases and attempts."""
    with single_statement(sessions) as session:
        return service.run_read(repository.read_run_detail(session, run_id))


MAX_WAIT_S = 60.0


@router.get("/{run_id}/status", response_model=RunStatusRead)
async def get_run_status(
    run_id: str,
    request: Request,
    sessions: SessionsDep,
    _caller: CallerDep,
    wait_s: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="Long poll: answer once the run is terminal (or its status differs from "
            "from_status), or after this many seconds with the current status.",
        ),
    ] = 0,
    from_status: Annotated[
        RunStatus | None, Query(description="With wait_s: answer as soon as the status is another.")
    ] = None,
) -> RunStatusRead:
    """Compact status for pollers; with wait_s, a long poll that answers as soon as the run changes."""

    def read() -> RunStatusRead:
        with single_statement(sessions) as session:  # one statement
            return service.read_status(session, run_id)

    def settles(status: str) -> bool:
        return status in RUN_TERMINAL if from_status is None else status != from_status

    def settled(status: RunStatusRead) -> bool:
        return settles(status.status)

    if wait_s <= 0:
        return await run_in_threadpool(read)
    notifications: RunNotifications = request.app.state.notifications
    deadline = time.monotonic() + wait_s
    with notifications.subscribe(run_id, settles) as changed:
        while True:
            changed.clear()  # before reading: a change during the read wakes the wait below
            status = await run_in_threadpool(read)
            remaining = deadline - time.monotonic()
            if settled(status) or remaining <= 0 or await request.is_disconnected():
                return status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    changed.wait(), timeout=min(remaining, notifications.poll_interval_s)
                )


@router.get("/{run_id}/events", response_model=list[RunEvent])
def get_run_events(run_id: str, sessions: SessionsDep, _caller: CallerDep) -> list[RunEvent]:
    """The run's timeline in order: status changes, attempts, mitigations, Doctor calls."""
    with sessions() as session:
        return events.timeline(session, repository.get_run_detail(session, run_id))


@router.get("/{run_id}/phases/{phase_id}/attempts/{number}/log", response_class=PlainTextResponse)
def get_attempt_log(
    run_id: str,
    phase_id: str,
    number: Annotated[int, Path(ge=1, le=1_000_000)],
    sessions: SessionsDep,
    _caller: CallerDep,
) -> str:
    """The full output of one attempt, as plain text."""
    with sessions() as session:
        attempt = repository.get_attempt(session, run_id, phase_id, number)
        log = repository.get_attempt_log(session, attempt)
        if log is None:
            raise NotFound(
                f"attempt {number} of phase {phase_id!r} has no stored log yet (status {attempt.status})"
            )
        return log.content


@router.post("/{run_id}/execute", status_code=202, response_model=RunRead)
def execute_run(
    run_id: str, sessions: SessionsDep, dispatcher: DispatcherDep, _caller: SubmitterDep
) -> RunRead:
    """Enqueue a run created with start: false; 409 when it is not in the created state."""
    with transaction(sessions) as session:
        service.start(session, run_id)
    with sessions() as session:
        stored = service.run_read(repository.get_run_detail(session, run_id))
    enqueue_committed(sessions, dispatcher, run_id)
    return stored


@router.post("/{run_id}/cancel", status_code=202, response_model=RunRead, responses={409: {}})
def cancel_run(run_id: str, sessions: SessionsDep, _caller: SubmitterDep) -> RunRead:
    """Cancel a run: at once if it has not started, else its worker stops the phase; 409 once it ended."""
    with transaction(sessions) as session:
        service.cancel(session, run_id)
    with sessions() as session:
        return service.run_read(repository.get_run_detail(session, run_id))
