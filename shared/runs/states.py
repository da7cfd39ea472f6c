"""Run and phase state machines: the allowed transitions, in one table."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run is in its life."""

    CREATED = "created"  # stored with start: false, not yet enqueued
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class PhaseStatus(StrEnum):
    """Where a phase is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class AttemptStatus(StrEnum):
    """How one execution of a phase ended."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"  # its worker died; another worker took the lease over
    FENCED = "fenced"  # its worker lost the lease and stopped


RUN_TERMINAL = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT}
)
PHASE_TERMINAL = frozenset(
    {PhaseStatus.SUCCEEDED, PhaseStatus.FAILED, PhaseStatus.SKIPPED, PhaseStatus.CANCELLED}
)

RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.CREATED: frozenset({RunStatus.QUEUED, RunStatus.CANCELLED}),
    RunStatus.QUEUED: frozenset(
        {RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.TIMED_OUT, RunStatus.FAILED}
    ),
    RunStatus.RUNNING: frozenset(
        {
            RunStatus.RUNNING,  # lease takeover after a dead worker
            RunStatus.CANCELLING,
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.TIMED_OUT,
        }
    ),
    RunStatus.CANCELLING: frozenset({RunStatus.CANCELLED, RunStatus.CANCELLING}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
    RunStatus.TIMED_OUT: frozenset(),
}

# Statuses a client may read as final; pollers (CLI, parallel runner) stop on these.
TERMINAL_RUN_STATUSES: tuple[str, ...] = tuple(sorted(s.value for s in RUN_TERMINAL))


def can_transition(current: RunStatus, target: RunStatus) -> bool:
    """Whether the table allows moving a run from current to target."""
    return target in RUN_TRANSITIONS[current]


def sources_of(target: RunStatus) -> frozenset[RunStatus]:
    """The statuses a run may be in to move to target (for conditional UPDATEs)."""
    return frozenset(s for s, targets in RUN_TRANSITIONS.items() if target in targets)
