"""api_keys: an optional expiry (the storefront's session keys expire with the session)

Revision ID: e5a8c2d7f190
Revises: b4e2f9a1c6d8
Create Date: 2026-12-01 23:35:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision = "e5a8c2d7f190"
down_revision = "b4e2f9a1c6d8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
