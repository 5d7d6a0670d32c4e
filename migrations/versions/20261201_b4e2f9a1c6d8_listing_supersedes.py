"""listings: the earlier version a listing supersedes (from its card)

Revision ID: b4e2f9a1c6d8
Revises: 7a1c9e5d3b20
Create Date: 2026-12-01 20:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision = "b4e2f9a1c6d8"
down_revision = "7a1c9e5d3b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("listings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("supersedes", sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f("ix_listings_supersedes"), ["supersedes"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("listings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_listings_supersedes"))
        batch_op.drop_column("supersedes")
