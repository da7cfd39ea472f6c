"""notify on changes to API keys

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-24 18:05:00
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Every change to api_keys that could withdraw a key (UPDATE: revoked; DELETE, TRUNCATE), whoever
# makes it, is announced on `autopack_api_keys`, so each API process forgets the keys it
# remembered (api/keycache.py). A new key needs no announcement: failures are never remembered.
FUNCTION = """
CREATE OR REPLACE FUNCTION autopack_notify_api_keys() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('autopack_api_keys', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
TRIGGER = """
CREATE TRIGGER autopack_api_keys_changed
AFTER UPDATE OR DELETE OR TRUNCATE ON api_keys
FOR EACH STATEMENT
EXECUTE FUNCTION autopack_notify_api_keys()
"""


def upgrade() -> None:
    """Add the trigger on PostgreSQL (idempotent)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute("DROP TRIGGER IF EXISTS autopack_api_keys_changed ON api_keys")
    op.execute(TRIGGER)


def downgrade() -> None:
    """Drop the trigger."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS autopack_api_keys_changed ON api_keys")
    op.execute("DROP FUNCTION IF EXISTS autopack_notify_api_keys()")
