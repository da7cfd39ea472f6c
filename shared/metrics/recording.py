"""Writing metric rows. Services flush; the caller owns the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.failures import FailureInfo
from shared.models import ErrorLog, LlmUsageEvent, Phase6Metric, TokenEfficiencyMetric


def record_error(
    session: Session,
    *,
    run_id: str,
    phase_id: str,
    attempt: int,
    failure: FailureInfo,
    caught: bool,
    pattern_id: str | None,
) -> ErrorLog:
    """One classified failure."""
    row = ErrorLog(
        run_id=run_id,
        phase_id=phase_id,
        attempt=attempt,
        error_type=failure.error_type,
        failure_class=str(failure.failure_class),
        message=failure.message,
        normalized_message=failure.normalized_message,
        signature=failure.signature,
        sample=failure.sample,
        hardening_caught=caught,
        pattern_id=pattern_id,
    )
    session.add(row)
    session.flush()
    return row


def record_phase6(session: Session, **fields: Any) -> Phase6Metric:
    """One Phase6 row (fields are Phase6Metric columns)."""
    row = Phase6Metric(**fields)
    session.add(row)
    session.flush()
    return row


def mark_mitigation_outcome(session: Session, row_id: int, fixed: bool) -> None:
    """After the retry that followed a mitigation: did it pass?"""
    session.execute(
        update(Phase6Metric).where(Phase6Metric.id == row_id).values(mitigation_fixed=fixed)
    )


def record_llm_usage(session: Session, **fields: Any) -> LlmUsageEvent:
    """One LLM call (fields are LlmUsageEvent columns)."""
    row = LlmUsageEvent(**fields)
    session.add(row)
    session.flush()
    return row


def record_token_efficiency(session: Session, **fields: Any) -> TokenEfficiencyMetric:
    """How one LLM context was budgeted."""
    row = TokenEfficiencyMetric(**fields)
    session.add(row)
    session.flush()
    return row


def tokens_spent(session: Session, run_id: str) -> int:
    """All LLM tokens a run has used so far (for its token_cap)."""
    total = session.scalar(
        select(func.coalesce(func.sum(LlmUsageEvent.total_tokens), 0)).where(
            LlmUsageEvent.run_id == run_id
        )
    )
    return int(total or 0)


def doctor_calls(session: Session, run_id: str, phase_id: str | None = None) -> int:
    """Doctor calls made for a run (or one of its phases)."""
    query = (
        select(func.count())
        .select_from(LlmUsageEvent)
        .where(LlmUsageEvent.run_id == run_id, LlmUsageEvent.is_doctor_call.is_(True))
    )
    if phase_id is not None:
        query = query.where(LlmUsageEvent.phase_id == phase_id)
    return int(session.scalar(query) or 0)
