"""notify on run status changes

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 09:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Every change of a run's status, whoever makes it (API, worker, sweeper), is announced on the
# channel `autopack_runs` with the run id, so long-polling clients wake at once (PostgreSQL only;
# SQLite has no notifications and the API falls back to polling).
FUNCTION = """
CREATE OR REPLACE FUNCTION autopack_notify_run_status() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('autopack_runs', NEW.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
TRIGGER = """
CREATE TRIGGER autopack_run_status_changed
AFTER UPDATE OF status ON runs
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION autopack_notify_run_status()
"""


def upgrade() -> None:
    """Add the trigger on PostgreSQL (idempotent)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute("DROP TRIGGER IF EXISTS autopack_run_status_changed ON runs")
    op.execute(TRIGGER)


def downgrade() -> None:
    """Drop the trigger."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS autopack_run_status_changed ON runs")
    op.execute("DROP FUNCTION IF EXISTS autopack_notify_run_status()")
