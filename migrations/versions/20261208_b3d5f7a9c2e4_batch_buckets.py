"""receipt batches cut by sequence: a batch closed over its size is no longer split by
rewriting its surplus rows

The batch builder moved every receipt past a batch's size into a further batch by
updating its usage row (on PostgreSQL a new version of the row and of each of its index
entries: 28% of receipts under load, with the close's lock held meanwhile). A batch now
names the batch its receipts were written into (`bucket`, None: itself) and the range of
sequences it holds; first_sequence and last_sequence are set when it closes.

Stop every builder of the old code before upgrading (indexers and gateway workers): an
old builder would read a cut batch as all of its bucket's rows.

Revision ID: b3d5f7a9c2e4
Revises: a8b2d4f6c1e3
Create Date: 2026-12-03 14:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision = "b3d5f7a9c2e4"
down_revision = "a8b2d4f6c1e3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CUT_FROM = (
    "SELECT b.id FROM receipt_batches b WHERE b.bucket = usage.batch_id"
    " AND usage.sequence BETWEEN b.first_sequence AND b.last_sequence"
)


def upgrade() -> None:
    op.add_column("receipt_batches", sa.Column("bucket", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_receipt_batches_bucket",
        "receipt_batches",
        ["bucket"],
        sqlite_where=sa.text("bucket IS NOT NULL"),
        postgresql_where=sa.text("bucket IS NOT NULL"),
    )


def downgrade() -> None:
    # the rows of a batch cut from another carry its own id again, as the old builder
    # wrote them
    op.execute(
        f"UPDATE usage SET batch_id = ({_CUT_FROM}) WHERE EXISTS ({_CUT_FROM})"  # noqa: S608
    )
    op.drop_index("ix_receipt_batches_bucket", table_name="receipt_batches")
    with op.batch_alter_table("receipt_batches") as table:
        table.drop_column("bucket")
