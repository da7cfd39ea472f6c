"""Dashboard routes: per-run Phase6, token efficiency and consolidated metrics; a global summary."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CallerDep, SessionsDep
from shared.analysis.ab import delta_for_run
from shared.metrics import queries
from shared.metrics.schemas import (
    ABDelta,
    ConsolidatedMetrics,
    DashboardSummary,
    Phase6Stats,
    TokenEfficiency,
)
from shared.models import utcnow
from shared.runs import repository

router = APIRouter(prefix="/dashboard", tags=["dashboard"])


@router.get("/runs/{run_id}/phase6-stats", response_model=Phase6Stats)
def phase6_stats(run_id: str, sessions: SessionsDep, _caller: CallerDep) -> Phase6Stats:
    """Failure hardening, Doctor skips with their estimate coverage, intention context, plan use."""
    with sessions() as session:
        repository.get_run(session, run_id)
        return queries.phase6_stats(session, run_id)


@router.get("/runs/{run_id}/token-efficiency", response_model=TokenEfficiency)
def token_efficiency(run_id: str, sessions: SessionsDep, _caller: CallerDep) -> TokenEfficiency:
    """How the run's LLM contexts were budgeted."""
    with sessions() as session:
        repository.get_run(session, run_id)
        return queries.token_efficiency(session, run_id)


@router.get("/runs/{run_id}/consolidated-metrics", response_model=ConsolidatedMetrics)
def consolidated_metrics(
    run_id: str, sessions: SessionsDep, _caller: CallerDep
) -> ConsolidatedMetrics:
    """Tokens spent, artifact tokens avoided, Doctor tokens avoided (estimate), A/B delta — never summed."""
    with sessions() as session:
        repository.get_run(session, run_id)
        return ConsolidatedMetrics(
            run_id=run_id,
            tokens_spent=queries.tokens_spent(session, run_id=run_id),
            artifact_tokens_avoided=queries.artifact_tokens_avoided(session, run_id=run_id),
            doctor_tokens_avoided=queries.doctor_tokens_avoided(session, run_id=run_id),
            ab_delta=delta_for_run(session, run_id) or ABDelta(),
        )


@router.get("/summary", response_model=DashboardSummary)
def summary(
    sessions: SessionsDep,
    _caller: CallerDep,
    since: Annotated[
        datetime | None, Query(description="ISO 8601 time; default 24 hours ago")
    ] = None,
    top: Annotated[int, Query(ge=1, le=100)] = 10,
) -> DashboardSummary:
    """All runs in a time window: counts, the four categories, top failure patterns, mitigation success."""
    start = since or utcnow() - timedelta(hours=24)
    if start.tzinfo is None:
        start = start.replace(tzinfo=utcnow().tzinfo)
    with sessions() as session:
        return queries.summary(session, start, top)
