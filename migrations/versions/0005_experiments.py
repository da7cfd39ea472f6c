"""experiments

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 04:35:52.961027
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Experiments and their pairs (idempotent)."""
    if sa.inspect(op.get_bind()).has_table("experiments"):
        return

    op.create_table(
        "experiments",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("control_flags", sa.JSON(), nullable=False),
        sa.Column("treatment_flags", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("commit_sha", sa.String(length=64), nullable=True),
        sa.Column("remote_url", sa.Text(), nullable=True),
        sa.Column("branch", sa.String(length=255), nullable=True),
        sa.Column("operator", sa.String(length=200), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    op.create_table(
        "experiment_pairs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("experiment_id", sa.String(length=128), nullable=False),
        sa.Column("pair_index", sa.Integer(), nullable=False),
        sa.Column("control_run_id", sa.String(length=128), nullable=False),
        sa.Column("treatment_run_id", sa.String(length=128), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=True),
        sa.Column("tokens_saved", sa.Integer(), nullable=True),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["control_run_id"],
            ["runs.id"],
            name=op.f("fk_experiment_pairs_control_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_experiment_pairs_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["treatment_run_id"],
            ["runs.id"],
            name=op.f("fk_experiment_pairs_treatment_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_pairs")),
        sa.UniqueConstraint(
            "experiment_id", "pair_index", name="uq_experiment_pairs_experiment_id_pair_index"
        ),
    )
    with op.batch_alter_table("experiment_pairs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_experiment_pairs_control_run_id"), ["control_run_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_experiment_pairs_treatment_run_id"), ["treatment_run_id"], unique=False
        )


def downgrade() -> None:
    """Drop experiments and pairs."""

    with op.batch_alter_table("experiment_pairs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiment_pairs_treatment_run_id"))
        batch_op.drop_index(batch_op.f("ix_experiment_pairs_control_run_id"))

    op.drop_table("experiment_pairs")
    op.drop_table("experiments")
