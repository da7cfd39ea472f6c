"""runs remember why they wait for their concurrency key

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-24 08:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "waiting_since" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}:
        return  # idempotent, like every migration here
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("waiting_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("waiting_reason")
        batch.drop_column("waiting_since")
