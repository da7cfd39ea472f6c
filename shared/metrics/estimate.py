"""The counterfactual cost of a Doctor call that hardening made unnecessary.

Median, not mean, so a few huge calls do not inflate the savings; the source and sample size are
recorded next to every estimate so readers can judge it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import LlmUsageEvent

EstimateSource = Literal["run_local", "global", "fallback"]
RUN_LOCAL_MIN_SAMPLES = 3
GLOBAL_WINDOW = 100
FALLBACK_TOKENS: dict[str | None, int] = {"cheap": 10_000, "strong": 15_000, None: 12_000}


@dataclass(frozen=True)
class DoctorEstimate:
    """Tokens a skipped Doctor call would have cost, with how the number was obtained."""

    tokens: int
    coverage_n: int
    source: EstimateSource


def estimate_doctor_tokens_avoided(
    session: Session, run_id: str, tier: str | None
) -> DoctorEstimate:
    """This run's median (≥ 3 calls of the tier), else the last 100 calls' median, else a fallback."""
    local = select(LlmUsageEvent.total_tokens).where(
        LlmUsageEvent.is_doctor_call.is_(True),
        LlmUsageEvent.run_id == run_id,
        LlmUsageEvent.error.is_(None),
    )
    if tier is not None:
        local = local.where(LlmUsageEvent.doctor_model_tier == tier)
    samples = list(session.scalars(local))
    if len(samples) >= RUN_LOCAL_MIN_SAMPLES:
        return DoctorEstimate(int(statistics.median(samples)), len(samples), "run_local")
    recent = list(
        session.scalars(
            select(LlmUsageEvent.total_tokens)
            .where(LlmUsageEvent.is_doctor_call.is_(True), LlmUsageEvent.error.is_(None))
            .order_by(LlmUsageEvent.created_at.desc(), LlmUsageEvent.id.desc())
            .limit(GLOBAL_WINDOW)
        )
    )
    if recent:
        return DoctorEstimate(int(statistics.median(recent)), len(recent), "global")
    return DoctorEstimate(FALLBACK_TOKENS.get(tier, FALLBACK_TOKENS[None]), 0, "fallback")
