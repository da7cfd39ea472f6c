"""metrics: error logs, phase6, llm usage, token efficiency

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 03:53:25.804494
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _has_table(name: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    """Create the metrics tables; tables that already exist are left alone (idempotent)."""
    if not _has_table("error_logs"):
        op.create_table(
            "error_logs",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("run_id", sa.String(length=128), nullable=False),
            sa.Column("phase_id", sa.String(length=64), nullable=False),
            sa.Column("attempt", sa.Integer(), nullable=False),
            sa.Column("error_type", sa.String(length=64), nullable=False),
            sa.Column("failure_class", sa.String(length=32), nullable=False),
            sa.Column("message", sa.Text(), nullable=False),
            sa.Column("normalized_message", sa.Text(), nullable=False),
            sa.Column("signature", sa.String(length=64), nullable=False),
            sa.Column("sample", sa.Text(), nullable=False),
            sa.Column("hardening_caught", sa.Boolean(), nullable=False),
            sa.Column("pattern_id", sa.String(length=100), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(
                ["run_id"], ["runs.id"], name=op.f("fk_error_logs_run_id_runs"), ondelete="CASCADE"
            ),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_error_logs")),
        )
        with op.batch_alter_table("error_logs", schema=None) as batch_op:
            batch_op.create_index(
                "ix_error_logs_caught_created_at", ["hardening_caught", "created_at"], unique=False
            )
            batch_op.create_index("ix_error_logs_run_id", ["run_id"], unique=False)
            batch_op.create_index(
                batch_op.f("ix_error_logs_signature"), ["signature"], unique=False
            )
    if not _has_table("llm_usage_events"):
        op.create_table(
            "llm_usage_events",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("run_id", sa.String(length=128), nullable=True),
            sa.Column("phase_id", sa.String(length=64), nullable=True),
            sa.Column("attempt", sa.Integer(), nullable=True),
            sa.Column("provider", sa.String(length=32), nullable=False),
            sa.Column("model", sa.String(length=200), nullable=False),
            sa.Column("role", sa.String(length=32), nullable=False),
            sa.Column("prompt_tokens", sa.Integer(), nullable=False),
            sa.Column("completion_tokens", sa.Integer(), nullable=False),
            sa.Column("total_tokens", sa.Integer(), nullable=False),
            sa.Column("is_doctor_call", sa.Boolean(), nullable=False),
            sa.Column("doctor_model_tier", sa.String(length=16), nullable=True),
            sa.Column("action", sa.String(length=32), nullable=True),
            sa.Column("cost_usd", sa.Float(), nullable=True),
            sa.Column("latency_ms", sa.Integer(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(
                ["run_id"],
                ["runs.id"],
                name=op.f("fk_llm_usage_events_run_id_runs"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_usage_events")),
        )
        with op.batch_alter_table("llm_usage_events", schema=None) as batch_op:
            batch_op.create_index(
                "ix_llm_usage_events_doctor_created_at",
                ["is_doctor_call", "created_at"],
                unique=False,
            )
            batch_op.create_index("ix_llm_usage_events_run_id", ["run_id"], unique=False)
    if not _has_table("phase6_metrics"):
        op.create_table(
            "phase6_metrics",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("run_id", sa.String(length=128), nullable=False),
            sa.Column("phase_id", sa.String(length=64), nullable=False),
            sa.Column("attempt", sa.Integer(), nullable=True),
            sa.Column("failure_hardening_triggered", sa.Boolean(), nullable=False),
            sa.Column("failure_pattern_detected", sa.String(length=100), nullable=True),
            sa.Column("failure_hardening_mitigated", sa.Boolean(), nullable=False),
            sa.Column("mitigation_fixed", sa.Boolean(), nullable=True),
            sa.Column("mitigation_actions", sa.JSON(), nullable=True),
            sa.Column("doctor_called", sa.Boolean(), nullable=False),
            sa.Column("doctor_action", sa.String(length=32), nullable=True),
            sa.Column("doctor_call_skipped", sa.Boolean(), nullable=False),
            sa.Column("doctor_tokens_avoided_estimate", sa.Integer(), nullable=True),
            sa.Column("estimate_coverage_n", sa.Integer(), nullable=True),
            sa.Column("estimate_source", sa.String(length=16), nullable=True),
            sa.Column("actual_tokens_saved", sa.Integer(), nullable=True),
            sa.Column("phase_outcome", sa.String(length=20), nullable=True),
            sa.Column("retry_count", sa.Integer(), nullable=False),
            sa.Column("duration_s", sa.Float(), nullable=True),
            sa.Column("intention_context_injected", sa.Boolean(), nullable=False),
            sa.Column("intention_context_chars", sa.Integer(), nullable=True),
            sa.Column("intention_context_source", sa.String(length=32), nullable=True),
            sa.Column("plan_normalization_used", sa.Boolean(), nullable=False),
            sa.Column("plan_normalization_confidence", sa.Float(), nullable=True),
            sa.Column("plan_normalization_warnings", sa.Integer(), nullable=True),
            sa.Column("plan_deliverables_count", sa.Integer(), nullable=True),
            sa.Column("plan_scope_size_bytes", sa.Integer(), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(
                ["run_id"],
                ["runs.id"],
                name=op.f("fk_phase6_metrics_run_id_runs"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_phase6_metrics")),
        )
        with op.batch_alter_table("phase6_metrics", schema=None) as batch_op:
            batch_op.create_index("ix_phase6_metrics_created_at", ["created_at"], unique=False)
            batch_op.create_index(
                "ix_phase6_metrics_run_id_phase_id", ["run_id", "phase_id"], unique=False
            )
    if not _has_table("token_efficiency_metrics"):
        op.create_table(
            "token_efficiency_metrics",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("run_id", sa.String(length=128), nullable=False),
            sa.Column("phase_id", sa.String(length=64), nullable=True),
            sa.Column("role", sa.String(length=32), nullable=False),
            sa.Column("context_budget_tokens", sa.Integer(), nullable=False),
            sa.Column("context_used_tokens", sa.Integer(), nullable=False),
            sa.Column("files_kept", sa.Integer(), nullable=False),
            sa.Column("files_omitted", sa.Integer(), nullable=False),
            sa.Column("artifact_substitutions", sa.Integer(), nullable=False),
            sa.Column("tokens_saved_artifacts", sa.Integer(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(
                ["run_id"],
                ["runs.id"],
                name=op.f("fk_token_efficiency_metrics_run_id_runs"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_token_efficiency_metrics")),
        )
        with op.batch_alter_table("token_efficiency_metrics", schema=None) as batch_op:
            batch_op.create_index("ix_token_efficiency_metrics_run_id", ["run_id"], unique=False)


def downgrade() -> None:
    """Drop the metrics tables."""
    if _has_table("token_efficiency_metrics"):
        with op.batch_alter_table("token_efficiency_metrics", schema=None) as batch_op:
            batch_op.drop_index("ix_token_efficiency_metrics_run_id")

        op.drop_table("token_efficiency_metrics")
    if _has_table("phase6_metrics"):
        with op.batch_alter_table("phase6_metrics", schema=None) as batch_op:
            batch_op.drop_index("ix_phase6_metrics_run_id_phase_id")
            batch_op.drop_index("ix_phase6_metrics_created_at")

        op.drop_table("phase6_metrics")
    if _has_table("llm_usage_events"):
        with op.batch_alter_table("llm_usage_events", schema=None) as batch_op:
            batch_op.drop_index("ix_llm_usage_events_run_id")
            batch_op.drop_index("ix_llm_usage_events_doctor_created_at")

        op.drop_table("llm_usage_events")
    if _has_table("error_logs"):
        with op.batch_alter_table("error_logs", schema=None) as batch_op:
            batch_op.drop_index(batch_op.f("ix_error_logs_signature"))
            batch_op.drop_index("ix_error_logs_run_id")
            batch_op.drop_index("ix_error_logs_caught_created_at")

        op.drop_table("error_logs")
