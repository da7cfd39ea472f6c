"""A/B experiments: launch matched runs and build reports (measurement: ab_measure.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from shared import repos
from shared.analysis.ab_measure import (
    CONVENTION,
    Aggregate,
    PairResult,
    aggregate,
    evaluate_pair,
    run_metrics,
)
from shared.analysis.ab_metadata import (
    ExperimentMetadata,
    apply_flags,
    check_flag_paths,
    run_facts,
)
from shared.errors import InvalidInput, NotFound
from shared.metrics.schemas import ABDelta
from shared.models import Experiment, ExperimentPair, Run, utcnow
from shared.runs import service
from shared.runs.spec import RUN_ID_PATTERN, RunCreate
from shared.settings import Settings

MAX_PAIRS: Final = 100
ARMS: Final = ("control", "treatment")
RunId = Annotated[str, StringConstraints(pattern=RUN_ID_PATTERN)]


class ExperimentCreate(BaseModel):
    """What a client submits: a base run spec, the flags of each arm, how many pairs, where it came from."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    spec: RunCreate
    control_flags: dict[str, Any] = Field(default_factory=dict, max_length=50)
    treatment_flags: dict[str, Any] = Field(default_factory=dict, max_length=50)
    pairs: int = Field(ge=1, le=MAX_PAIRS)
    metadata: ExperimentMetadata = Field(default_factory=ExperimentMetadata)


class AdHocReportRequest(BaseModel):
    """Runs paired by position, compared without storing anything; ignore_paths are the varied settings."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    control_runs: list[RunId] = Field(min_length=1, max_length=2 * MAX_PAIRS)
    treatment_runs: list[RunId] = Field(min_length=1, max_length=2 * MAX_PAIRS)
    ignore_paths: list[str] = Field(default_factory=list, max_length=50)


class PairRead(BaseModel):
    """One pair of an experiment, its runs' statuses and what the last report found."""

    index: int
    control_run_id: str
    treatment_run_id: str
    control_status: str | None
    treatment_status: str | None
    valid: bool | None
    tokens_saved: int | None
    warnings: list[str]
    errors: list[str]


class ExperimentSummary(BaseModel):
    """An experiment's identity, flags and reproducibility metadata."""

    id: str
    name: str | None
    control_flags: dict[str, Any]
    treatment_flags: dict[str, Any]
    spec_hash: str
    commit_sha: str | None
    remote_url: str | None
    branch: str | None
    operator: str | None
    metadata: dict[str, Any]
    created_at: datetime


class ExperimentRead(ExperimentSummary):
    """An experiment with its base spec and pairs."""

    spec: dict[str, Any]
    pairs: list[PairRead]


class ABReport(BaseModel):
    """A full A/B report: the experiment (null for ad-hoc pairs), each pair, the aggregate."""

    experiment: ExperimentSummary | None
    generated_at: datetime
    convention: str
    ignored_paths: list[str]
    pairs: list[PairResult]
    aggregate: Aggregate


@dataclass(frozen=True)
class CreatedExperiment:
    """The outcome of creating an experiment: its id and the runs to enqueue after commit, in order."""

    experiment_id: str
    to_enqueue: list[str]


def new_experiment_id() -> str:
    """A server-chosen experiment id."""
    return f"exp-{uuid.uuid4().hex[:12]}"


def _arm_run(base: RunCreate, experiment_id: str, arm: str, index: int) -> RunCreate:
    """The arm's spec for one pair: its own run id and the experiment's labels (which win over the base's)."""
    data = base.model_dump(mode="json")
    data["run_id"] = f"{experiment_id}-{index}-{arm}"
    data["labels"] = {**base.labels, "experiment": experiment_id, "arm": arm, "pair": str(index)}
    try:
        return RunCreate.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(
            f"spec.labels: {error.errors()[0]['msg']}", field="spec.labels"
        ) from error


def create_experiment(
    session: Session, settings: Settings, request: ExperimentCreate
) -> CreatedExperiment:
    """Store the experiment, its 2N runs and pairs (flushed, not committed); the caller enqueues after commit."""
    if request.spec.run_id is not None:
        raise InvalidInput(
            "an experiment names its runs itself; remove run_id from the spec", field="spec.run_id"
        )
    arms = {
        "control": apply_flags(request.spec, request.control_flags, "control_flags"),
        "treatment": apply_flags(request.spec, request.treatment_flags, "treatment_flags"),
    }
    try:
        repos.resolve(session, settings, request.spec.repo)
    except NotFound as error:
        raise InvalidInput(str(error), field="spec.repo") from error
    meta = request.metadata
    experiment = Experiment(
        id=new_experiment_id(),
        name=request.name,
        control_flags=dict(request.control_flags),
        treatment_flags=dict(request.treatment_flags),
        spec=request.spec.canonical(),
        spec_hash=request.spec.spec_hash(),
        commit_sha=meta.commit_sha,
        remote_url=meta.remote_url,
        branch=meta.branch,
        operator=meta.operator,
        metadata_=meta.model_dump(
            mode="json",
            exclude={"commit_sha", "remote_url", "branch", "operator"},
            exclude_none=True,
        ),
        created_at=utcnow(),
    )
    session.add(experiment)
    session.flush()
    to_enqueue: list[str] = []
    for index in range(request.pairs):
        ids: dict[str, str] = {}
        # Alternate which arm goes first so neither always meets the emptier queue.
        for arm in ARMS if index % 2 == 0 else ARMS[::-1]:
            submitted = service.submit(
                session, settings, _arm_run(arms[arm], experiment.id, arm, index)
            )
            ids[arm] = submitted.run.id
            if submitted.needs_enqueue:
                to_enqueue.append(submitted.run.id)
        session.add(
            ExperimentPair(
                experiment_id=experiment.id,
                pair_index=index,
                control_run_id=ids["control"],
                treatment_run_id=ids["treatment"],
                warnings=[],
                errors=[],
                created_at=utcnow(),
            )
        )
    session.flush()
    return CreatedExperiment(experiment.id, to_enqueue)


def get_experiment(session: Session, experiment_id: str) -> Experiment:
    """The experiment with its pairs, or NotFound."""
    experiment = session.scalars(
        select(Experiment)
        .where(Experiment.id == experiment_id)
        .options(selectinload(Experiment.pairs))
    ).one_or_none()
    if experiment is None:
        raise NotFound(f"experiment {experiment_id!r} not found")
    return experiment


def flag_paths(experiment: Experiment) -> list[str]:
    """The setting paths either arm sets: what the pairs are meant to differ in."""
    return sorted({*experiment.control_flags, *experiment.treatment_flags})


def experiment_summary(experiment: Experiment) -> ExperimentSummary:
    """The API view of an experiment without its pairs."""
    return ExperimentSummary(
        id=experiment.id,
        name=experiment.name,
        control_flags=experiment.control_flags,
        treatment_flags=experiment.treatment_flags,
        spec_hash=experiment.spec_hash,
        commit_sha=experiment.commit_sha,
        remote_url=experiment.remote_url,
        branch=experiment.branch,
        operator=experiment.operator,
        metadata=experiment.metadata_,
        created_at=experiment.created_at,
    )


def experiment_read(session: Session, experiment_id: str) -> ExperimentRead:
    """The experiment, its base spec and each pair with its runs' current statuses."""
    experiment = get_experiment(session, experiment_id)
    ids = [i for p in experiment.pairs for i in (p.control_run_id, p.treatment_run_id)]
    statuses = dict(
        session.execute(select(Run.id, Run.status).where(Run.id.in_(ids))).tuples().all()
    )
    pairs = [
        PairRead(
            index=p.pair_index,
            control_run_id=p.control_run_id,
            treatment_run_id=p.treatment_run_id,
            control_status=statuses.get(p.control_run_id),
            treatment_status=statuses.get(p.treatment_run_id),
            valid=p.valid,
            tokens_saved=p.tokens_saved,
            warnings=list(p.warnings or []),
            errors=list(p.errors or []),
        )
        for p in experiment.pairs
    ]
    summary = experiment_summary(experiment)
    return ExperimentRead(**summary.model_dump(), spec=experiment.spec, pairs=pairs)


def build_report(
    session: Session,
    pairs: Sequence[tuple[int, str, str]],
    ignore_paths: Sequence[str],
    experiment: ExperimentSummary | None = None,
) -> ABReport:
    """The report of (index, control id, treatment id) pairs read from the database."""
    ids = [run_id for _, c, t in pairs for run_id in (c, t)]
    facts, metrics = run_facts(session, ids), run_metrics(session, ids)
    results = [evaluate_pair(i, c, t, facts, metrics, ignore_paths) for i, c, t in pairs]
    return ABReport(
        experiment=experiment,
        generated_at=utcnow(),
        convention=CONVENTION,
        ignored_paths=sorted(ignore_paths),
        pairs=results,
        aggregate=aggregate(results),
    )


def experiment_report(session: Session, experiment_id: str) -> ABReport:
    """The experiment's report; stores each pair's validity and tokens saved (flushed, not committed)."""
    experiment = get_experiment(session, experiment_id)
    report = build_report(
        session,
        [(p.pair_index, p.control_run_id, p.treatment_run_id) for p in experiment.pairs],
        flag_paths(experiment),
        experiment_summary(experiment),
    )
    for pair, result in zip(experiment.pairs, report.pairs, strict=True):
        pair.valid = result.valid
        pair.tokens_saved = result.delta.total_tokens if result.delta else None
        pair.warnings = list(result.warnings)
        pair.errors = list(result.errors)
    session.flush()
    return report


def adhoc_report(session: Session, request: AdHocReportRequest) -> ABReport:
    """A report of runs paired by position; nothing is stored."""
    if len(request.control_runs) != len(request.treatment_runs):
        raise InvalidInput(
            f"control_runs has {len(request.control_runs)} runs but treatment_runs has "
            f"{len(request.treatment_runs)}; runs are paired by position",
            field="treatment_runs",
        )
    check_flag_paths(dict.fromkeys(request.ignore_paths), "ignore_paths")
    pairs = [
        (index, c, t)
        for index, (c, t) in enumerate(
            zip(request.control_runs, request.treatment_runs, strict=True)
        )
    ]
    return build_report(session, pairs, request.ignore_paths)


def delta_for_run(session: Session, run_id: str) -> ABDelta | None:
    """Category 4 of the dashboard: the stored tokens saved of the valid pair this run is in, else None."""
    pair = session.scalars(
        select(ExperimentPair)
        .where(
            or_(ExperimentPair.control_run_id == run_id, ExperimentPair.treatment_run_id == run_id),
            ExperimentPair.valid.is_(True),
        )
        .order_by(ExperimentPair.id.desc())
        .limit(1)
    ).first()
    if pair is None or pair.tokens_saved is None:
        return None
    return ABDelta(
        experiment_id=pair.experiment_id,
        pair_id=str(pair.pair_index),
        tokens_saved=pair.tokens_saved,
    )
