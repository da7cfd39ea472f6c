"""run status notifications carry the new status

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-24 17:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The payload becomes "<run id> <new status>" (run ids hold no space), so the API wakes only the
# long polls the new status answers: a run starting no longer costs each waiter a read. The API
# reads a bare run id (0010's payload) as "changed to something": it wakes every waiter.
FUNCTION = """
CREATE OR REPLACE FUNCTION autopack_notify_run_status() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('autopack_runs', NEW.id || ' ' || NEW.status);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
PREVIOUS = """
CREATE OR REPLACE FUNCTION autopack_notify_run_status() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('autopack_runs', NEW.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    """Replace the trigger's function on PostgreSQL (idempotent); the trigger stays."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    """Back to the bare run id."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PREVIOUS)
