"""A/B measurement: what each run spent and achieved, each pair's delta and validity, and the
aggregate over the valid pairs (shared/analysis/ab.py launches experiments and builds reports)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from pydantic import BaseModel
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from shared.analysis.ab_metadata import RunFacts, validate_pair
from shared.models import Attempt, LlmUsageEvent, Phase, Phase6Metric, Run
from shared.runs.states import PhaseStatus, RunStatus

METRICS: Final = (
    "total_tokens",
    "builder_tokens",
    "doctor_tokens",
    "doctor_calls",
    "doctor_calls_skipped",
    "success",
    "retries",
    "wall_time_s",
)
CONVENTION: Final = (
    "delta = control - treatment: a positive delta of tokens, calls, retries or wall time means the "
    "treatment spent less; a negative success delta means the treatment succeeded more often"
)


class RunMetrics(BaseModel):
    """What one run spent and achieved, from the database."""

    run_id: str
    status: str
    success: bool
    total_tokens: int
    builder_tokens: int
    doctor_tokens: int
    doctor_calls: int
    doctor_calls_skipped: int
    retries: int
    phases_total: int
    phases_succeeded: int
    wall_time_s: float | None


class MetricDeltas(BaseModel):
    """Control minus treatment for each metric of a pair (wall time null when a run lacks times)."""

    total_tokens: int
    builder_tokens: int
    doctor_tokens: int
    doctor_calls: int
    doctor_calls_skipped: int
    success: int
    retries: int
    wall_time_s: float | None


class PairResult(BaseModel):
    """One control/treatment pair: both runs' metrics, the delta, and whether it counts."""

    index: int
    control_run_id: str
    treatment_run_id: str
    valid: bool
    warnings: list[str]
    errors: list[str]
    control: RunMetrics | None
    treatment: RunMetrics | None
    delta: MetricDeltas | None


class MetricSummary(BaseModel):
    """A metric over the valid pairs: each arm's mean and the deltas' mean, median, stdev and total."""

    n: int
    control_mean: float | None
    treatment_mean: float | None
    delta_mean: float | None
    delta_median: float | None
    delta_stdev: float | None
    delta_total: float


class Aggregate(BaseModel):
    """The valid pairs together; invalid pairs are counted, never included."""

    valid_pairs: int
    invalid_pairs: int
    metrics: dict[str, MetricSummary]
    success_rate_control: float | None
    success_rate_treatment: float | None
    tokens_control_total: int
    tokens_treatment_total: int
    tokens_saved_total: int
    tokens_saved_percent: float | None


def run_metrics(session: Session, run_ids: Iterable[str]) -> dict[str, RunMetrics]:
    """Per-run metrics of the runs that exist, by id, in a handful of grouped queries."""
    ids = sorted(set(run_ids))
    if not ids:
        return {}
    is_doctor_role = LlmUsageEvent.role == "doctor"
    usage = {
        run_id: (int(total), int(doctor), int(calls))
        for run_id, total, doctor, calls in session.execute(
            select(
                LlmUsageEvent.run_id,
                func.coalesce(func.sum(LlmUsageEvent.total_tokens), 0),
                func.coalesce(
                    func.sum(case((is_doctor_role, LlmUsageEvent.total_tokens), else_=0)), 0
                ),
                func.coalesce(
                    func.sum(case((LlmUsageEvent.is_doctor_call.is_(True), 1), else_=0)), 0
                ),
            )
            .where(LlmUsageEvent.run_id.in_(ids))
            .group_by(LlmUsageEvent.run_id)
        ).tuples()
    }
    skipped = dict(
        session.execute(
            select(Phase6Metric.run_id, func.count())
            .where(Phase6Metric.run_id.in_(ids), Phase6Metric.doctor_call_skipped.is_(True))
            .group_by(Phase6Metric.run_id)
        )
        .tuples()
        .all()
    )
    retries: dict[str, int] = defaultdict(int)
    for run_id, count in session.execute(
        select(Attempt.run_id, func.count())
        .where(Attempt.run_id.in_(ids))
        .group_by(Attempt.run_id, Attempt.phase_pk)
    ).tuples():
        retries[run_id] += max(int(count) - 1, 0)
    phases = {
        run_id: (int(total), int(done))
        for run_id, total, done in session.execute(
            select(
                Phase.run_id,
                func.count(),
                func.coalesce(
                    func.sum(case((Phase.status == PhaseStatus.SUCCEEDED, 1), else_=0)), 0
                ),
            )
            .where(Phase.run_id.in_(ids))
            .group_by(Phase.run_id)
        ).tuples()
    }
    result: dict[str, RunMetrics] = {}
    for run in session.scalars(select(Run).where(Run.id.in_(ids))):
        total, doctor, calls = usage.get(run.id, (0, 0, 0))
        phases_total, phases_done = phases.get(run.id, (0, 0))
        wall = (
            (run.finished_at - run.started_at).total_seconds()
            if run.started_at and run.finished_at
            else None
        )
        result[run.id] = RunMetrics(
            run_id=run.id,
            status=run.status,
            success=run.status == RunStatus.SUCCEEDED,
            total_tokens=total,
            builder_tokens=total - doctor,
            doctor_tokens=doctor,
            doctor_calls=calls,
            doctor_calls_skipped=int(skipped.get(run.id, 0)),
            retries=retries[run.id],
            phases_total=phases_total,
            phases_succeeded=phases_done,
            wall_time_s=wall,
        )
    return result


def metric_deltas(control: RunMetrics, treatment: RunMetrics) -> MetricDeltas:
    """Control minus treatment, metric by metric."""
    wall = (
        control.wall_time_s - treatment.wall_time_s
        if control.wall_time_s is not None and treatment.wall_time_s is not None
        else None
    )
    return MetricDeltas(
        total_tokens=control.total_tokens - treatment.total_tokens,
        builder_tokens=control.builder_tokens - treatment.builder_tokens,
        doctor_tokens=control.doctor_tokens - treatment.doctor_tokens,
        doctor_calls=control.doctor_calls - treatment.doctor_calls,
        doctor_calls_skipped=control.doctor_calls_skipped - treatment.doctor_calls_skipped,
        success=int(control.success) - int(treatment.success),
        retries=control.retries - treatment.retries,
        wall_time_s=wall,
    )


def _value(metrics: RunMetrics, name: str) -> float | None:
    value = getattr(metrics, name)
    return None if value is None else float(value)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarize_metric(pairs: Sequence[PairResult], name: str) -> MetricSummary:
    """One metric over valid pairs where both runs have a value."""
    controls: list[float] = []
    treatments: list[float] = []
    for pair in pairs:
        if not pair.valid or pair.control is None or pair.treatment is None:
            continue
        c, t = _value(pair.control, name), _value(pair.treatment, name)
        if c is not None and t is not None:
            controls.append(c)
            treatments.append(t)
    deltas = [c - t for c, t in zip(controls, treatments, strict=True)]
    return MetricSummary(
        n=len(deltas),
        control_mean=_mean(controls),
        treatment_mean=_mean(treatments),
        delta_mean=_mean(deltas),
        delta_median=statistics.median(deltas) if deltas else None,
        delta_stdev=statistics.stdev(deltas) if len(deltas) >= 2 else None,
        delta_total=sum(deltas),
    )


def aggregate(pairs: Sequence[PairResult]) -> Aggregate:
    """The statistics of the valid pairs; invalid pairs are only counted."""
    valid = [p for p in pairs if p.valid and p.control and p.treatment]
    metrics = {name: summarize_metric(valid, name) for name in METRICS}
    control_tokens = sum(p.control.total_tokens for p in valid if p.control)
    treatment_tokens = sum(p.treatment.total_tokens for p in valid if p.treatment)
    saved = control_tokens - treatment_tokens
    return Aggregate(
        valid_pairs=len(valid),
        invalid_pairs=len(pairs) - len(valid),
        metrics=metrics,
        success_rate_control=metrics["success"].control_mean,
        success_rate_treatment=metrics["success"].treatment_mean,
        tokens_control_total=control_tokens,
        tokens_treatment_total=treatment_tokens,
        tokens_saved_total=saved,
        tokens_saved_percent=100.0 * saved / control_tokens if control_tokens else None,
    )


def evaluate_pair(
    index: int,
    control_id: str,
    treatment_id: str,
    facts: Mapping[str, RunFacts],
    metrics: Mapping[str, RunMetrics],
    ignore_paths: Sequence[str] = (),
) -> PairResult:
    """A pair's validity, metrics and delta (the delta only when the pair is valid)."""
    warnings, errors = validate_pair(
        control_id, treatment_id, facts.get(control_id), facts.get(treatment_id), ignore_paths
    )
    control, treatment = metrics.get(control_id), metrics.get(treatment_id)
    valid = not errors and control is not None and treatment is not None
    return PairResult(
        index=index,
        control_run_id=control_id,
        treatment_run_id=treatment_id,
        valid=valid,
        warnings=warnings,
        errors=errors,
        control=control,
        treatment=treatment,
        delta=metric_deltas(control, treatment) if valid and control and treatment else None,
    )
