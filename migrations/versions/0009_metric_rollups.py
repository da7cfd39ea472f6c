"""hourly metric rollups

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLES = ("llm_usage_hourly", "token_efficiency_hourly", "phase6_hourly")


def _hour(dialect: str) -> str:
    if dialect == "postgresql":
        return "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    return "strftime('%Y-%m-%d %H:00:00.000000', created_at)"


def _backfill(dialect: str) -> list[str]:
    """The rollups of the rows already stored (a frozen copy of shared.metrics.rollups' SQL)."""
    hour = _hour(dialect)
    true = "true" if dialect == "postgresql" else "1"
    return [
        f"""INSERT INTO llm_usage_hourly (hour, role, model, action, is_doctor_call, calls,
                prompt_tokens, completion_tokens, total_tokens, cost_usd)
            SELECT {hour}, role, model, coalesce(action, ''), is_doctor_call, count(*),
                   coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
                   coalesce(sum(total_tokens), 0), sum(cost_usd)
            FROM llm_usage_events GROUP BY 1, 2, 3, 4, 5""",  # noqa: S608 - constant SQL fragments
        f"""INSERT INTO token_efficiency_hourly (hour, contexts, tokens_saved, substitutions)
            SELECT {hour}, count(*), coalesce(sum(tokens_saved_artifacts), 0),
                   coalesce(sum(artifact_substitutions), 0)
            FROM token_efficiency_metrics GROUP BY 1""",  # noqa: S608 - constant SQL fragments
        f"""INSERT INTO phase6_hourly (hour, pattern, source, skipped, n, fixed, decided,
                coverage_n, tokens)
            SELECT {hour}, coalesce(failure_pattern_detected, ''), coalesce(estimate_source, ''),
                   doctor_call_skipped, count(*),
                   sum(CASE WHEN mitigation_fixed = {true} THEN 1 ELSE 0 END),
                   sum(CASE WHEN mitigation_fixed IS NOT NULL THEN 1 ELSE 0 END),
                   coalesce(sum(estimate_coverage_n), 0),
                   coalesce(sum(doctor_tokens_avoided_estimate), 0)
            FROM phase6_metrics GROUP BY 1, 2, 3, 4""",  # noqa: S608 - constant SQL fragments
    ]


def upgrade() -> None:
    """Hourly rollups of the metric tables, filled from the rows already stored (idempotent)."""
    bind = op.get_bind()
    if "llm_usage_hourly" in sa.inspect(bind).get_table_names():
        return
    op.create_table(
        "llm_usage_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("is_doctor_call", sa.Boolean(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint(
            "hour", "role", "model", "action", "is_doctor_call", name=op.f("pk_llm_usage_hourly")
        ),
    )
    op.create_table(
        "token_efficiency_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("contexts", sa.BigInteger(), nullable=False),
        sa.Column("tokens_saved", sa.BigInteger(), nullable=False),
        sa.Column("substitutions", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", name=op.f("pk_token_efficiency_hourly")),
    )
    op.create_table(
        "phase6_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pattern", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("fixed", sa.BigInteger(), nullable=False),
        sa.Column("decided", sa.BigInteger(), nullable=False),
        sa.Column("coverage_n", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "pattern", "source", "skipped", name=op.f("pk_phase6_hourly")
        ),
    )
    for statement in _backfill(bind.dialect.name):
        op.execute(sa.text(statement))


def downgrade() -> None:
    """Drop the rollups (the raw rows are untouched)."""
    for table in TABLES:
        op.drop_table(table)
