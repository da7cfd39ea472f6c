"""workers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 04:08:49.116192
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


WINDOW_INDEXES = [
    ("llm_usage_events", "ix_llm_usage_events_created_at", "created_at"),
    ("token_efficiency_metrics", "ix_token_efficiency_metrics_created_at", "created_at"),
    ("attempts", "ix_attempts_started_at", "started_at"),
]


def _has_table(name: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    """The workers table, and created_at indexes the dashboard's windows use (idempotent)."""
    inspector = sa.inspect(op.get_bind())
    for table, index, column in WINDOW_INDEXES:
        if index not in {i["name"] for i in inspector.get_indexes(table)}:
            op.create_index(index, table, [column])
    if _has_table("workers"):
        return

    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active_runs", sa.JSON(), nullable=False),
        sa.Column("received_total", sa.BigInteger(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stalled_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workers_last_seen_at"), ["last_seen_at"], unique=False)


def downgrade() -> None:
    """Drop the workers table and the window indexes."""
    for table, index, _column in WINDOW_INDEXES:
        op.drop_index(index, table_name=table)

    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workers_last_seen_at"))

    op.drop_table("workers")
