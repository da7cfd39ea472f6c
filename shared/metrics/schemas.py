"""Response models of the dashboard: four token categories that are never added together."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class CoverageBucket(BaseModel):
    """How many estimates came from one source, and the samples behind them."""

    count: int = 0
    total_n: int = 0


class Phase6Stats(BaseModel):
    """What failure hardening and intention context did in one run."""

    run_id: str
    total_phases: int
    failure_hardening_triggered_count: int
    patterns_detected: dict[str, int]
    mitigations_fixed: int
    doctor_calls_made: int
    doctor_calls_skipped: int
    total_doctor_tokens_avoided_estimate: int
    estimate_coverage_stats: dict[str, CoverageBucket]
    intention_context_injected_count: int
    intention_context_total_chars: int
    intention_context_avg_chars: float
    plan_normalization_used: bool


class TokenEfficiency(BaseModel):
    """How LLM contexts of one run were budgeted (from token_efficiency_metrics)."""

    run_id: str
    contexts: int
    context_budget_tokens: int
    context_used_tokens: int
    files_kept: int
    files_omitted: int
    artifact_substitutions: int
    tokens_saved_artifacts: int


class TokensSpent(BaseModel):
    """Category 1: tokens actually spent, from llm_usage_events."""

    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    doctor_tokens: int
    llm_calls: int
    doctor_calls: int
    cost_usd: float | None


class ArtifactTokensAvoided(BaseModel):
    """Category 2: tokens kept out of LLM contexts by substituting artifacts (token_efficiency_metrics)."""

    tokens_saved: int
    substitutions: int


class DoctorTokensAvoided(BaseModel):
    """Category 3: the counterfactual cost of Doctor calls hardening made unnecessary (an estimate)."""

    estimate_total: int
    calls_skipped: int
    coverage: dict[str, CoverageBucket]


class ABDelta(BaseModel):
    """Category 4: tokens saved as measured by a valid A/B pair (null until the run is in one)."""

    experiment_id: str | None = None
    pair_id: str | None = None
    tokens_saved: int | None = None


class ConsolidatedMetrics(BaseModel):
    """The four categories, strictly apart: summing them would count the same tokens twice."""

    run_id: str
    tokens_spent: TokensSpent
    artifact_tokens_avoided: ArtifactTokensAvoided
    doctor_tokens_avoided: DoctorTokensAvoided
    ab_delta: ABDelta = Field(default_factory=ABDelta)


class PatternCount(BaseModel):
    """A failure pattern and how often it fired and fixed the retry."""

    pattern_id: str
    triggered: int
    fixed: int


class DashboardSummary(BaseModel):
    """All runs created since a time: counts, the four categories, top patterns, mitigation success."""

    since: datetime
    runs: dict[str, int]
    phases: int
    attempts: int
    tokens_spent: TokensSpent
    artifact_tokens_avoided: ArtifactTokensAvoided
    doctor_tokens_avoided: DoctorTokensAvoided
    top_failure_patterns: list[PatternCount]
    mitigation_success_rate: float | None
