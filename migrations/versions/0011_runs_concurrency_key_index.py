"""index runs by concurrency key

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 08:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# Admission under a concurrency key counts the key's running/cancelling runs and its queued runs in
# submission order on every delivery of a keyed run; without this index each count scans `runs`.
NAME = "ix_runs_concurrency_key_status_created_at"


def upgrade() -> None:
    op.create_index(NAME, "runs", ["concurrency_key", "status", "created_at"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index(NAME, table_name="runs", if_exists=True)
