"""api key scopes

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 05:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Scopes of API keys; existing keys keep what they could do (read and submit) (idempotent)."""
    if "scopes" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("api_keys")}:
        return
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
    op.execute(sa.text("""UPDATE api_keys SET scopes = '["read", "submit"]'"""))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column("scopes", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    """Drop key scopes."""
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("scopes")
