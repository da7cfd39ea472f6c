"""The engine of `autopack parallel`: per-run state, polling backoff, the API and embedded drivers."""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx
from sqlalchemy.orm import Session, sessionmaker

from cli.client import TRANSIENT_STATUS, make_client
from shared.db import transaction
from shared.errors import AutopackError, Conflict, InvalidInput, NotFound
from shared.runs import repository, service
from shared.runs.spec import RunCreate
from shared.runs.states import TERMINAL_RUN_STATUSES, PhaseStatus, RunStatus
from shared.settings import Settings
from workers.attempts import worker_identity
from workers.executor import RunExecutor

WAITING = "waiting"  # not yet submitted (no free slot); a client-side state, not a run status
SUBMITTING = "submitting"
REJECTED = "rejected"  # the server refused the run (bad input): counts as exit code 2
ERROR = "error"  # tracking the run failed for a non-transient reason
TIMEOUT = "timeout"
INTERRUPTED = "interrupted"
HALT_REASONS = {
    TIMEOUT: "cancelled here at --timeout (nothing else would execute it)",
    INTERRUPTED: "cancelled here on interrupt (nothing else would execute it)",
}
# Statuses a run cancelled at the timeout may still end in when it finished first.
ENDED_ON_ITS_OWN = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT})


def backoff_delays(
    start: float = 0.5,
    factor: float = 1.5,
    cap: float = 10.0,
    jitter: float = 0.2,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Endless delays: start, times factor each time up to cap, each with ±jitter (as a fraction)."""
    uniform = (rng or random.Random()).uniform
    base = start
    while True:
        yield base * uniform(1 - jitter, 1 + jitter)
        base = min(base * factor, cap)


def _seconds_between(start: Any, end: Any) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()


@dataclass
class RunItem:
    """One run of the batch; written only by the thread tracking it, read by the display."""

    source: str
    spec: RunCreate | None = None
    run_id: str | None = None
    start_if_created: bool = False
    status: str = WAITING
    current_phase: str | None = None
    percent: float = 0.0
    outcome: str | None = None
    category: str | None = None
    reason: str | None = None
    result_commit: str | None = None
    attempts: int | None = None
    duration_s: float | None = None
    began: float | None = None
    ended: float | None = None

    @property
    def active(self) -> bool:
        """Submitted (or followed) and not finished."""
        return self.began is not None and self.outcome is None

    def apply_status(self, body: Mapping[str, Any]) -> None:
        """Take in a GET /runs/{id}/status body."""
        self.status = str(body["status"])
        self.current_phase = body.get("current_phase")
        self.percent = float(body.get("percent_complete") or 0.0)
        self.reason = body.get("failure_reason")
        self.result_commit = body.get("result_commit")

    def apply_run(self, run: Mapping[str, Any]) -> None:
        """Take in a full run (GET /runs/{id}): status, attempts across phases, duration, commit."""
        self.status = str(run["status"])
        self.reason = run.get("failure_reason")
        self.result_commit = run.get("result_commit")
        self.attempts = sum(len(p.get("attempts") or []) for p in run.get("phases") or [])
        self.duration_s = _seconds_between(run.get("started_at"), run.get("finished_at"))

    def finish(self, outcome: str, category: str, reason: str | None = None) -> None:
        """Record how tracking this run ended."""
        if self.duration_s is None and self.began is not None:
            self.duration_s = time.monotonic() - self.began
        self.outcome, self.category = outcome, category
        self.reason = reason if reason is not None else self.reason
        self.ended = time.monotonic()

    def finish_observed(self, halt_label: str) -> None:
        """Finish on the last status seen: terminal, else `<halt_label> (still <status>)`."""
        if self.status in TERMINAL_RUN_STATUSES:
            self.finish(self.status, self.status)
        else:
            self.finish(f"{halt_label} (still {self.status})", halt_label)


@dataclass
class Batch:
    """The runs of one invocation, the overall deadline and the stop signal."""

    items: list[RunItem]
    concurrency: int
    timeout_s: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    halt_label: str = TIMEOUT
    started: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float:
        """Monotonic time of the overall timeout (infinity without one)."""
        return math.inf if self.timeout_s is None else self.started + self.timeout_s

    def halted(self) -> bool:
        """Whether tracking must stop: the timeout passed or the user interrupted."""
        return self.stop.is_set() or time.monotonic() >= self.deadline

    def pause(self, seconds: float) -> bool:
        """Wait up to seconds (never past the deadline); False when the batch halted meanwhile."""
        self.stop.wait(max(0.0, min(seconds, self.deadline - time.monotonic())))
        return not self.halted()


class Driver(Protocol):
    """Executes or follows runs; track() is called from pool threads and never raises."""

    def track(self, item: RunItem) -> None:
        """Start the run if needed and follow it until it is terminal or the batch halts."""

    def halt(self, label: str) -> None:
        """Stop the batch (main thread): at the timeout or on Ctrl-C."""


class ApiError(Exception):
    """A non-transient HTTP error answer."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = response.text[:300]
        detail = body.get("detail") if isinstance(body, dict) else body
        if isinstance(detail, list):
            detail = "; ".join(f"{d.get('field') or d.get('loc')}: {d.get('msg')}" for d in detail)
        super().__init__(f"HTTP {response.status_code}: {detail}")
        self.status_code = response.status_code


@dataclass
class ApiDriver:
    """Submits runs to the API and polls their status with backoff and jitter."""

    settings: Settings
    batch: Batch

    def track(self, item: RunItem) -> None:
        """Submit or start the run, then poll it; transient HTTP errors are retried."""
        if self.batch.halted():
            item.finish_observed(self.batch.halt_label)
            return
        try:
            with make_client(self.settings) as client:
                if self._start(client, item):
                    self._follow(client, item)
                if item.run_id is not None:
                    self._read_run(client, item)
        except ApiError as error:
            rejected = item.spec is not None and item.run_id is None and error.status_code < 500
            label = REJECTED if rejected else ERROR
            item.finish(label, label, str(error))
            return
        except Exception as error:
            item.finish(ERROR, ERROR, f"{type(error).__name__}: {error}")
            return
        item.finish_observed(self.batch.halt_label)

    def halt(self, label: str) -> None:
        """Stop polling; the runs go on on the workers."""
        self.batch.halt_label = label
        self.batch.stop.set()

    def _send(self, client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send once; raise ApiError on an error answer, httpx.TransportError or _Transient."""
        remaining = self.batch.deadline - time.monotonic()
        response = client.request(method, url, timeout=max(1.0, min(30.0, remaining)), **kwargs)
        if response.status_code in TRANSIENT_STATUS:
            raise _Transient(response.status_code)
        if response.status_code >= 400 and response.status_code != 409:
            raise ApiError(response)
        return response

    def _retrying(
        self, client: httpx.Client, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        """Send until an answer that is not transient; None when the batch halts first."""
        delays = backoff_delays()
        while True:
            try:
                return self._send(client, method, url, **kwargs)
            except (httpx.TransportError, _Transient):
                if not self.batch.pause(next(delays)):
                    return None

    def _start(self, client: httpx.Client, item: RunItem) -> bool:
        """POST /runs (or /runs/{id}/execute for a created run); False when the batch halted."""
        item.began = time.monotonic()
        if item.spec is not None:
            item.status = SUBMITTING
            # The spec carries a run_id, so retrying a POST whose answer was lost cannot duplicate it.
            body = item.spec.model_dump(mode="json", exclude_none=True)
            response = self._retrying(client, "POST", "/runs", json=body)
            if response is None:
                return False
            if response.status_code == 409:
                raise ApiError(response)
            run = response.json()
            item.run_id, item.status = run["id"], run["status"]
            return True
        if (
            item.start_if_created
            and self._retrying(client, "POST", f"/runs/{item.run_id}/execute") is None
        ):
            return False  # (a 409 means another client started it meanwhile, which is fine)
        if item.start_if_created:
            item.status = RunStatus.QUEUED
        return True

    def _follow(self, client: httpx.Client, item: RunItem) -> None:
        """Poll GET /runs/{id}/status with backoff until terminal or halted."""
        for delay in backoff_delays():
            # A transient failure only skips this poll: it must not end the tracking.
            with contextlib.suppress(httpx.TransportError, _Transient):
                item.apply_status(self._send(client, "GET", f"/runs/{item.run_id}/status").json())
            if item.status in TERMINAL_RUN_STATUSES or not self.batch.pause(delay):
                return

    def _read_run(self, client: httpx.Client, item: RunItem) -> None:
        """Attempts, duration and result commit from GET /runs/{id} (best effort once halted)."""
        for delay in (0.5, 1.0, 2.0, None):
            try:
                item.apply_run(self._send(client, "GET", f"/runs/{item.run_id}").json())
                return
            except (httpx.TransportError, _Transient):
                if delay is None or not self.batch.pause(delay):
                    return


class _Transient(Exception):
    """A 502/503/504 answer."""


@dataclass
class _ItemObserver:
    """Feeds the executor's progress events into the run's display row."""

    item: RunItem
    phases: int
    done: int = 0

    def attempt_started(self, phase_id: str, attempt: int) -> None:
        self.item.status, self.item.current_phase = RunStatus.RUNNING, phase_id

    def attempt_finished(self, phase_id: str, attempt: int, status: str) -> None:
        return None

    def phase_finished(self, phase_id: str, status: str) -> None:
        if status in (PhaseStatus.SUCCEEDED, PhaseStatus.SKIPPED):
            self.done += 1
            self.item.percent = 100.0 * self.done / max(1, self.phases)


@dataclass
class LocalDriver:
    """Executes runs in this process on the embedded database, one executor per run."""

    settings: Settings
    sessions: sessionmaker[Session]
    batch: Batch
    halted_runs: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, item: RunItem) -> None:
        """Submit (or start) the run, execute it here, then read how it ended."""
        if self.batch.halted():
            item.finish_observed(self.batch.halt_label)
            return
        try:
            with self.lock:  # halt() must see every run that is about to execute
                if self.batch.halted():
                    item.finish_observed(self.batch.halt_label)
                    return
                self._start(item)
        except (InvalidInput, Conflict, NotFound) as error:
            item.finish(REJECTED, REJECTED, str(error))
            return
        assert item.run_id is not None
        try:
            self._execute(item, item.run_id)
        except Exception as error:
            item.finish(ERROR, ERROR, f"run {item.run_id} stopped: {error}")
            return
        halted_while = self.halted_runs.get(item.run_id)
        if halted_while is not None and item.status not in ENDED_ON_ITS_OWN:
            item.finish(
                f"{self.batch.halt_label} (still {halted_while})",
                self.batch.halt_label,
                HALT_REASONS[self.batch.halt_label],
            )
        else:
            item.finish_observed(self.batch.halt_label)

    def halt(self, label: str) -> None:
        """Start no more runs and cancel those executing (nothing would finish them later)."""
        with self.lock:
            self.batch.halt_label = label
            self.batch.stop.set()
        for item in self.batch.items:
            if item.run_id is None or not item.active:
                continue
            self.halted_runs[item.run_id] = item.status  # before the executor can see the cancel
            try:
                with transaction(self.sessions) as session:
                    service.cancel(session, item.run_id)
            except (Conflict, NotFound):
                self.halted_runs.pop(item.run_id, None)  # it ended meanwhile

    def _start(self, item: RunItem) -> None:
        item.began = time.monotonic()
        with transaction(self.sessions) as session:
            if item.spec is not None:
                spec = item.spec.model_copy(update={"start": True})
                run = service.submit(session, self.settings, spec).run
                item.run_id, item.status = run.id, run.status
            elif item.start_if_created:
                assert item.run_id is not None
                with contextlib.suppress(Conflict):  # started meanwhile
                    service.start(session, item.run_id)
                    item.status = RunStatus.QUEUED

    def _execute(self, item: RunItem, run_id: str) -> None:
        with self.sessions() as session:
            phases = len(repository.get_run_detail(session, run_id).phases)
        observer = _ItemObserver(item, phases)
        try:
            RunExecutor(
                self.settings, self.sessions, worker_identity(), observer, wait_for_admission=True
            ).execute(run_id)  # a run whose concurrency key is full waits here for a slot
        except AutopackError:
            self._read(item, run_id)
            if item.status not in TERMINAL_RUN_STATUSES:
                raise
        # None from execute(): another process holds the run (or it had ended); follow it.
        for delay in backoff_delays():
            self._read(item, run_id, full=False)
            if item.status in TERMINAL_RUN_STATUSES or not self.batch.pause(delay):
                break
        self._read(item, run_id)

    def _read(self, item: RunItem, run_id: str, *, full: bool = True) -> None:
        with self.sessions() as session:
            run = repository.get_run_detail(session, run_id)
            if full:
                item.apply_run(service.run_read(run).model_dump(mode="json"))
            else:
                item.apply_status(service.status_of(run).model_dump(mode="json"))
