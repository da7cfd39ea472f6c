"""run queue

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 05:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """The queue each run is sent to, so re-sends reach the workers that serve it (idempotent)."""
    if "queue" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}:
        return
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("queue", sa.String(length=200), server_default="autopack", nullable=False)
        )


def downgrade() -> None:
    """Drop the queue column."""
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("queue")
