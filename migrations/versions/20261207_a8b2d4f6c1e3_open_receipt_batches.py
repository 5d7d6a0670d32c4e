"""receipt batches: a receipt is written into its gateway's open batch

A batch was built by updating each of its receipts' rows with its id (on PostgreSQL a
new version of a ~350-byte row and two index entries each: ~20 us a receipt). Now each
gateway has an open batch (receipt_sequences.open_batch) that its receipts are written
into; building a batch closes it (the pointer moves on, under a lock the writers take
too) and hashes what it holds. Receipts written before this have their batch already,
or none yet: those go into the next batch the old way (ix_usage_unbatched).

Revision ID: a8b2d4f6c1e3
Revises: f1a3c5e7b9d2
Create Date: 2026-12-03 09:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision = "a8b2d4f6c1e3"
down_revision = "f1a3c5e7b9d2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("receipt_sequences", sa.Column("open_batch", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_usage_batch",
        "usage",
        ["batch_id", "sequence"],
        sqlite_where=sa.text("batch_id IS NOT NULL"),
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )


def downgrade() -> None:
    # open and closed batches go back to waiting: their receipts have no batch again
    op.execute(
        "UPDATE usage SET batch_id = NULL WHERE batch_id IN"
        " (SELECT id FROM receipt_batches WHERE state IN ('open', 'closed'))"
    )
    op.execute("DELETE FROM receipt_batches WHERE state IN ('open', 'closed')")
    op.drop_index("ix_usage_batch", table_name="usage")
    with op.batch_alter_table("receipt_sequences") as table:
        table.drop_column("open_batch")
