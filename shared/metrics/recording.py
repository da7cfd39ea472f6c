"""Writing metric rows. Services flush; the caller owns the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.failures import FailureInfo
from shared.metrics import rollups
from shared.models import ErrorLog, LlmUsageEvent, Phase6Metric, TokenEfficiencyMetric, utcnow


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
    """One Phase6 row (fields are Phase6Metric columns), counted in its hourly rollup."""
    row = Phase6Metric(**{"created_at": utcnow(), **fields})
    session.add(row)
    session.flush()
    rollups.add_phase6(session, row)
    return row


def mark_mitigation_outcome(session: Session, row_id: int, fixed: bool) -> None:
    """After the retry that followed a mitigation: did it pass?"""
    row = session.scalars(
        select(Phase6Metric).where(Phase6Metric.id == row_id).with_for_update()
    ).one()
    before = row.mitigation_fixed
    row.mitigation_fixed = fixed
    session.flush()
    rollups.settle_phase6(session, row, before)


def record_llm_usage(session: Session, **fields: Any) -> LlmUsageEvent:
    """One LLM call (fields are LlmUsageEvent columns), counted in its hourly rollup."""
    row = LlmUsageEvent(**{"created_at": utcnow(), **fields})
    session.add(row)
    session.flush()
    rollups.add_llm_usage(session, row)
    return row


def record_token_efficiency(session: Session, **fields: Any) -> TokenEfficiencyMetric:
    """How one LLM context was budgeted, counted in its hourly rollup."""
    row = TokenEfficiencyMetric(**{"created_at": utcnow(), **fields})
    session.add(row)
    session.flush()
    rollups.add_token_efficiency(session, row)
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
