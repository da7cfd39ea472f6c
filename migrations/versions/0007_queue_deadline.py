"""run queue deadline

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 05:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """When a queued run must have started (budgets.max_queue_wait_s), indexed for the sweeper (idempotent)."""
    if "queue_deadline_at" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}:
        return
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("queue_deadline_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_runs_queue_deadline_at", ["queue_deadline_at"], unique=False)


def downgrade() -> None:
    """Drop the queue deadline."""
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_queue_deadline_at")
        batch_op.drop_column("queue_deadline_at")
