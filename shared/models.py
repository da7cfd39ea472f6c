"""ORM models: what was asked (runs, phases) is separate from each execution (attempts)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (Alembic needs them on SQLite)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Run(Base):
    """A requested run: its spec, status, lease and result."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    repo: Mapped[str] = mapped_column(String(100))
    ref: Mapped[str] = mapped_column(String(255))
    goal: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    concurrency_key: Mapped[str | None] = mapped_column(String(200))
    # The broker queue the run is sent to; re-sends (sweeper, reconciler) go to the same queue.
    queue: Mapped[str] = mapped_column(String(200), default="autopack", server_default="autopack")
    status: Mapped[str] = mapped_column(String(20), index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    queue_deadline_at: Mapped[datetime | None] = mapped_column(
        index=True
    )  # must have started by then
    # Set when a delivery found the run's concurrency key full: since when and why it waits (the
    # reason is refreshed on each later delivery; both stay after it starts, for the timeline).
    waiting_since: Mapped[datetime | None]
    waiting_reason: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    lease_token: Mapped[int] = mapped_column(BigInteger, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    base_commit: Mapped[str | None] = mapped_column(String(64))
    checkpoint_commit: Mapped[str | None] = mapped_column(String(64))
    result_commit: Mapped[str | None] = mapped_column(String(64))
    result_diffstat: Mapped[str | None] = mapped_column(Text)

    phases: Mapped[list[Phase]] = relationship(
        back_populates="run", order_by="Phase.position", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_runs_created_at_id", "created_at", "id"),
        Index("ix_runs_status_lease_expires_at", "status", "lease_expires_at"),
        # Concurrency keys: slots held (key, running/cancelling) and waiters in order (key, queued).
        Index(
            "ix_runs_concurrency_key_status_created_at", "concurrency_key", "status", "created_at"
        ),
    )


class Phase(Base):
    """One ordered step of a run."""

    __tablename__ = "phases"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    phase_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    max_attempts: Mapped[int] = mapped_column(Integer)
    timeout_s: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    attempts_count: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    checkpoint_commit: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    drift_score: Mapped[float | None]  # similarity of what the phase changed to the goal (0..1)
    drift_flagged: Mapped[bool | None] = mapped_column(Boolean)  # below the run's threshold

    run: Mapped[Run] = relationship(back_populates="phases")
    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="phase", order_by="Attempt.number", cascade="all, delete-orphan"
    )

    __table_args__ = (
        UniqueConstraint("run_id", "phase_id", name="uq_phases_run_id_phase_id"),
        Index("ix_phases_run_id_position", "run_id", "position"),
    )


class Attempt(Base):
    """One execution of a phase, by one worker under one lease token."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    phase_pk: Mapped[int] = mapped_column(ForeignKey("phases.pk", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(255))
    lease_token: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    exit_code: Mapped[int | None] = mapped_column(Integer)
    signal: Mapped[int | None] = mapped_column(Integer)
    failure_class: Mapped[str | None] = mapped_column(String(32))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    commands: Mapped[list[str]] = mapped_column(JSON, default=list)
    output_tail: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pgid: Mapped[int | None] = mapped_column(Integer)  # process group of the running command
    mitigation: Mapped[str | None] = mapped_column(String(100))

    phase: Mapped[Phase] = relationship(back_populates="attempts")

    __table_args__ = (
        UniqueConstraint("phase_pk", "number", name="uq_attempts_phase_pk_number"),
        Index("ix_attempts_started_at", "started_at"),
    )


class AttemptLog(Base):
    """An attempt's full output (capped), readable from any host."""

    __tablename__ = "attempt_logs"

    attempt_id: Mapped[int] = mapped_column(
        ForeignKey("attempts.id", ondelete="CASCADE"), primary_key=True
    )
    content: Mapped[str] = mapped_column(Text)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    """A client credential; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["read", "submit"])
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Repository(Base):
    """A repository registered on the server; runs name it, never a path."""

    __tablename__ = "repositories"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ErrorLog(Base):
    """One failed attempt, classified: the input of pattern expansion."""

    __tablename__ = "error_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    phase_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str] = mapped_column(String(64))
    failure_class: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    normalized_message: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(64), index=True)
    sample: Mapped[str] = mapped_column(Text)
    hardening_caught: Mapped[bool] = mapped_column(Boolean, default=False)
    pattern_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_error_logs_run_id", "run_id"),
        Index("ix_error_logs_caught_created_at", "hardening_caught", "created_at"),
    )


class Phase6Metric(Base):
    """Per failed or mitigated attempt: what hardening did, what the Doctor would have cost."""

    __tablename__ = "phase6_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    phase_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int | None] = mapped_column(Integer)
    failure_hardening_triggered: Mapped[bool] = mapped_column(Boolean, default=False)
    failure_pattern_detected: Mapped[str | None] = mapped_column(String(100))
    failure_hardening_mitigated: Mapped[bool] = mapped_column(Boolean, default=False)
    mitigation_fixed: Mapped[bool | None] = mapped_column(Boolean)  # the retry succeeded
    mitigation_actions: Mapped[list[str] | None] = mapped_column(JSON)
    doctor_called: Mapped[bool] = mapped_column(Boolean, default=False)
    doctor_action: Mapped[str | None] = mapped_column(String(32))
    doctor_call_skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    doctor_tokens_avoided_estimate: Mapped[int | None] = mapped_column(Integer)
    estimate_coverage_n: Mapped[int | None] = mapped_column(Integer)
    estimate_source: Mapped[str | None] = mapped_column(String(16))
    actual_tokens_saved: Mapped[int | None] = mapped_column(Integer)  # reserved for A/B deltas
    phase_outcome: Mapped[str | None] = mapped_column(String(20))
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    duration_s: Mapped[float | None]
    intention_context_injected: Mapped[bool] = mapped_column(Boolean, default=False)
    intention_context_chars: Mapped[int | None] = mapped_column(Integer)
    intention_context_source: Mapped[str | None] = mapped_column(String(32))
    plan_normalization_used: Mapped[bool] = mapped_column(Boolean, default=False)
    plan_normalization_confidence: Mapped[float | None]
    plan_normalization_warnings: Mapped[int | None] = mapped_column(Integer)
    plan_deliverables_count: Mapped[int | None] = mapped_column(Integer)
    plan_scope_size_bytes: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_phase6_metrics_run_id_phase_id", "run_id", "phase_id"),
        Index("ix_phase6_metrics_created_at", "created_at"),
    )


class LlmUsageEvent(Base):
    """One LLM call: who asked, which model, how many tokens, what it cost."""

    __tablename__ = "llm_usage_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    phase_id: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int | None] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0)
    is_doctor_call: Mapped[bool] = mapped_column(Boolean, default=False)
    doctor_model_tier: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str | None] = mapped_column(String(32))
    cost_usd: Mapped[float | None]
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_llm_usage_events_run_id", "run_id"),
        Index("ix_llm_usage_events_doctor_created_at", "is_doctor_call", "created_at"),
        Index("ix_llm_usage_events_created_at", "created_at"),
    )


class TokenEfficiencyMetric(Base):
    """How an LLM context was budgeted: what was kept, omitted or substituted."""

    __tablename__ = "token_efficiency_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    phase_id: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    context_budget_tokens: Mapped[int] = mapped_column(Integer)
    context_used_tokens: Mapped[int] = mapped_column(Integer)
    files_kept: Mapped[int] = mapped_column(Integer, default=0)
    files_omitted: Mapped[int] = mapped_column(Integer, default=0)
    artifact_substitutions: Mapped[int] = mapped_column(Integer, default=0)
    tokens_saved_artifacts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_token_efficiency_metrics_run_id", "run_id"),
        Index("ix_token_efficiency_metrics_created_at", "created_at"),
    )


class WorkerRecord(Base):
    """A worker process that registered and heartbeats: where it runs and whether it consumes."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the Celery node name
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    active_runs: Mapped[list[str]] = mapped_column(JSON, default=list)
    received_total: Mapped[int] = mapped_column(BigInteger, default=0)
    last_received_at: Mapped[datetime | None]
    stalled_since: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]


class Experiment(Base):
    """An A/B experiment: matched runs that differ only in named settings, with reproducibility metadata."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    control_flags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    treatment_flags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the base run spec both arms start from
    spec_hash: Mapped[str] = mapped_column(String(64))
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    remote_url: Mapped[str | None] = mapped_column(Text)
    branch: Mapped[str | None] = mapped_column(String(255))
    operator: Mapped[str | None] = mapped_column(String(200))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    pairs: Mapped[list[ExperimentPair]] = relationship(
        back_populates="experiment",
        order_by="ExperimentPair.pair_index",
        cascade="all, delete-orphan",
    )


class ExperimentPair(Base):
    """One matched control/treatment pair of an experiment, and its measured delta once valid."""

    __tablename__ = "experiment_pairs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    pair_index: Mapped[int] = mapped_column(Integer)
    control_run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), index=True
    )
    treatment_run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), index=True
    )
    valid: Mapped[bool | None] = mapped_column(Boolean)  # set by the last report
    tokens_saved: Mapped[int | None] = mapped_column(
        Integer
    )  # control - treatment tokens, when valid
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    errors: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    experiment: Mapped[Experiment] = relationship(back_populates="pairs")

    __table_args__ = (
        UniqueConstraint(
            "experiment_id", "pair_index", name="uq_experiment_pairs_experiment_id_pair_index"
        ),
    )


class LlmUsageHourly(Base):
    """llm_usage_events summed per UTC hour, kept current by every write (dashboard windows)."""

    __tablename__ = "llm_usage_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    action: Mapped[str] = mapped_column(String(32), primary_key=True)  # '' for none
    is_doctor_call: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float | None]


class TokenEfficiencyHourly(Base):
    """token_efficiency_metrics summed per UTC hour."""

    __tablename__ = "token_efficiency_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    contexts: Mapped[int] = mapped_column(BigInteger)
    tokens_saved: Mapped[int] = mapped_column(BigInteger)
    substitutions: Mapped[int] = mapped_column(BigInteger)


class Phase6Hourly(Base):
    """phase6_metrics counted per UTC hour, pattern, estimate source and skipped Doctor call."""

    __tablename__ = "phase6_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    pattern: Mapped[str] = mapped_column(String(100), primary_key=True)  # '' for none
    source: Mapped[str] = mapped_column(String(16), primary_key=True)  # '' for none
    skipped: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    fixed: Mapped[int] = mapped_column(BigInteger)
    decided: Mapped[int] = mapped_column(BigInteger)  # mitigation_fixed is not null
    coverage_n: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)  # doctor_tokens_avoided_estimate
