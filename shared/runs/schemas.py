"""What the API returns about runs: read models built from ORM rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class ReadModel(BaseModel):
    """Read models are built from ORM objects."""

    model_config = ConfigDict(from_attributes=True)


class AttemptRead(ReadModel):
    """One execution of a phase."""

    number: int
    status: str
    worker: str
    started_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    signal: int | None
    failure_class: str | None
    failure_reason: str | None
    commands: list[str]
    output_tail: str | None
    mitigation: str | None


class PhaseRead(ReadModel):
    """A phase with its attempts."""

    phase_id: str
    name: str | None
    kind: str
    position: int
    status: str
    max_attempts: int
    timeout_s: int
    attempts_count: int
    started_at: datetime | None
    finished_at: datetime | None
    checkpoint_commit: str | None
    failure_reason: str | None
    drift_score: float | None = None
    drift_flagged: bool | None = None
    spec: dict[str, Any]
    attempts: list[AttemptRead] = []


class RunSummary(ReadModel):
    """A run without its phases, for listings."""

    id: str
    repo: str
    ref: str
    goal: str
    status: str
    labels: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    failure_reason: str | None
    result_commit: str | None


class RunRead(RunSummary):
    """A run with its phases and their attempts."""

    spec: dict[str, Any]
    base_commit: str | None
    checkpoint_commit: str | None
    result_diffstat: str | None
    lease_owner: str | None
    intention_context_chars: int | None = None
    # While queued behind its concurrency key: why (holders and older waiters); else null.
    waiting_reason: str | None = None
    phases: list[PhaseRead]


class RunPage(BaseModel):
    """One page of runs, newest first."""

    items: list[RunSummary]
    next_cursor: str | None


class RunStatusRead(BaseModel):
    """The compact status pollers read."""

    id: str
    status: str
    terminal: bool
    phases: dict[str, int]
    percent_complete: float
    current_phase: str | None
    failure_reason: str | None
    result_commit: str | None
    # While queued behind its concurrency key: why; else null.
    waiting_reason: str | None = None
