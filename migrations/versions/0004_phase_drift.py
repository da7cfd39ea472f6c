"""phase drift score

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _columns() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("phases")}


def upgrade() -> None:
    """Goal-drift score and flag on phases (idempotent)."""
    existing = _columns()
    with op.batch_alter_table("phases", schema=None) as batch_op:
        if "drift_score" not in existing:
            batch_op.add_column(sa.Column("drift_score", sa.Float(), nullable=True))
        if "drift_flagged" not in existing:
            batch_op.add_column(sa.Column("drift_flagged", sa.Boolean(), nullable=True))


def downgrade() -> None:
    """Drop the drift columns."""
    with op.batch_alter_table("phases", schema=None) as batch_op:
        batch_op.drop_column("drift_flagged")
        batch_op.drop_column("drift_score")
