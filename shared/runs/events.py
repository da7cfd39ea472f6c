"""A run's timeline, assembled from the rows that record it: status changes, attempts, mitigations, Doctor calls."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import LlmUsageEvent, Phase6Metric, Run

# Among events at the same instant, causes come before effects.
ORDER = {
    "run.created": 0,
    "run.started": 1,
    "attempt.started": 2,
    "attempt.finished": 3,
    "mitigation": 4,
    "doctor.call": 5,
    "phase.finished": 6,
    "run.finished": 7,
}


class RunEvent(BaseModel):
    """One thing that happened to a run."""

    at: datetime
    kind: str
    phase_id: str | None = None
    attempt: int | None = None
    detail: dict[str, Any] = {}


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """The entries that have a value."""
    return {key: value for key, value in values.items() if value is not None}


def timeline(session: Session, run: Run) -> list[RunEvent]:
    """Every event of a run in time order (phases and attempts must be loaded)."""
    events = [
        RunEvent(
            at=run.created_at,
            kind="run.created",
            detail=_compact(
                {"repo": run.repo, "ref": run.ref, "concurrency_key": run.concurrency_key}
            ),
        )
    ]
    if run.waiting_since:
        events.append(
            RunEvent(
                at=run.waiting_since,
                kind="run.waiting",
                detail=_compact({"reason": run.waiting_reason}),
            )
        )
    if run.started_at:
        events.append(RunEvent(at=run.started_at, kind="run.started"))
    for phase in run.phases:
        for attempt in phase.attempts:
            events.append(
                RunEvent(
                    at=attempt.started_at,
                    kind="attempt.started",
                    phase_id=phase.phase_id,
                    attempt=attempt.number,
                    detail={"worker": attempt.worker},
                )
            )
            if attempt.finished_at:
                detail = {
                    "status": attempt.status,
                    "exit_code": attempt.exit_code,
                    "failure_class": attempt.failure_class,
                    "mitigation": attempt.mitigation,
                }
                events.append(
                    RunEvent(
                        at=attempt.finished_at,
                        kind="attempt.finished",
                        phase_id=phase.phase_id,
                        attempt=attempt.number,
                        detail=_compact(detail),
                    )
                )
        if phase.finished_at:
            phase_detail: dict[str, Any] = {
                "status": phase.status,
                "reason": phase.failure_reason,
                "drift_score": phase.drift_score,
            }
            events.append(
                RunEvent(
                    at=phase.finished_at,
                    kind="phase.finished",
                    phase_id=phase.phase_id,
                    detail=_compact(phase_detail),
                )
            )
    mitigations = session.scalars(
        select(Phase6Metric).where(
            Phase6Metric.run_id == run.id, Phase6Metric.failure_pattern_detected.is_not(None)
        )
    )
    for row in mitigations:
        events.append(
            RunEvent(
                at=row.created_at,
                kind="mitigation",
                phase_id=row.phase_id,
                attempt=row.attempt,
                detail={
                    "pattern": row.failure_pattern_detected,
                    "actions": row.mitigation_actions or [],
                    "fixed": row.mitigation_fixed,
                    "doctor_call_skipped": row.doctor_call_skipped,
                },
            )
        )
    for call in session.scalars(
        select(LlmUsageEvent).where(
            LlmUsageEvent.run_id == run.id, LlmUsageEvent.is_doctor_call.is_(True)
        )
    ):
        call_detail: dict[str, Any] = {
            "model": call.model,
            "tier": call.doctor_model_tier,
            "action": call.action,
            "total_tokens": call.total_tokens,
            "error": call.error,
        }
        events.append(
            RunEvent(
                at=call.created_at,
                kind="doctor.call",
                phase_id=call.phase_id,
                attempt=call.attempt,
                detail=_compact(call_detail),
            )
        )
    if run.finished_at:
        events.append(
            RunEvent(
                at=run.finished_at,
                kind="run.finished",
                detail=_compact(
                    {
                        "status": run.status,
                        "reason": run.failure_reason,
                        "result_commit": run.result_commit,
                    }
                ),
            )
        )
    return sorted(events, key=lambda e: (e.at, ORDER.get(e.kind, 9)))
