"""usage receipts, their Merkle batches and sequence numbers

Revision ID: c9d1e4a7b2f6
Revises: a6c4e8f1b3d5
Create Date: 2026-12-02 08:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from marketplace.db.tables import ROW_ID, Uint256

revision = "c9d1e4a7b2f6"
down_revision = "a6c4e8f1b3d5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_receipts",
        sa.Column("inference_id", sa.String(length=32), nullable=False),
        sa.Column("gateway", sa.String(length=42), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("model_digest", sa.String(length=66), nullable=False),
        sa.Column("input_digest", sa.String(length=66), nullable=False),
        sa.Column("output_digest", sa.String(length=66), nullable=False),
        sa.Column("buyer", sa.String(length=42), nullable=False),
        sa.Column("price", Uint256(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("time", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("inference_id"),
        sa.UniqueConstraint("gateway", "sequence", name="uq_usage_receipt_sequence"),
    )
    op.create_index("ix_usage_receipts_model_id", "usage_receipts", ["model_id"])
    op.create_index("ix_usage_receipts_batch_id", "usage_receipts", ["batch_id"])
    op.create_index(
        "ix_usage_receipts_unbatched",
        "usage_receipts",
        ["gateway", "sequence"],
        sqlite_where=sa.text("batch_id IS NULL"),
        postgresql_where=sa.text("batch_id IS NULL"),
    )
    op.create_table(
        "receipt_batches",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("gateway", sa.String(length=42), nullable=False),
        sa.Column("root", sa.String(length=66), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_sequence", sa.BigInteger(), nullable=True),
        sa.Column("last_sequence", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("sending_at", sa.Float(), nullable=True),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("anchored_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("gateway", "root", name="uq_receipt_batch_root"),
    )
    op.create_index("ix_receipt_batches_state", "receipt_batches", ["state"])
    op.create_table(
        "receipt_sequences",
        sa.Column("gateway", sa.String(length=42), nullable=False),
        sa.Column("next", sa.BigInteger(), nullable=False),
        sa.Column("builder", sa.String(length=64), nullable=True),
        sa.Column("build_until", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("gateway"),
    )


def downgrade() -> None:
    op.drop_table("receipt_sequences")
    op.drop_index("ix_receipt_batches_state", table_name="receipt_batches")
    op.drop_table("receipt_batches")
    op.drop_index("ix_usage_receipts_unbatched", table_name="usage_receipts")
    op.drop_index("ix_usage_receipts_batch_id", table_name="usage_receipts")
    op.drop_index("ix_usage_receipts_model_id", table_name="usage_receipts")
    op.drop_table("usage_receipts")
