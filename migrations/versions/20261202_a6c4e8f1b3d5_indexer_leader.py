"""indexer_state.leader: which indexer process made the last pass

Revision ID: a6c4e8f1b3d5
Revises: f3b7d1e9a2c4
Create Date: 2026-12-02 02:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision = "a6c4e8f1b3d5"
down_revision = "f3b7d1e9a2c4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("indexer_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leader", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("indexer_state", schema=None) as batch_op:
        batch_op.drop_column("leader")
