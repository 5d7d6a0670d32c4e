"""usage receipts: drop the model_id and batch_id indexes

Every paid call inserts a receipt, and every batch build updates 10,000 of them, so each
index is paid for on the hot path (bench.receipts: these two cost PostgreSQL ~30% of a
receipt's database CPU). No query filters on model_id (the per-model anchored counts
group the whole table); a batch's receipts are found by its sequence range on
uq_usage_receipt_sequence.

Revision ID: d2f8a6c1e3b9
Revises: c9d1e4a7b2f6
Create Date: 2026-12-02 14:00:00

"""

from collections.abc import Sequence

from alembic import op

revision = "d2f8a6c1e3b9"
down_revision = "c9d1e4a7b2f6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_usage_receipts_model_id", table_name="usage_receipts")
    op.drop_index("ix_usage_receipts_batch_id", table_name="usage_receipts")


def downgrade() -> None:
    op.create_index("ix_usage_receipts_batch_id", "usage_receipts", ["batch_id"])
    op.create_index("ix_usage_receipts_model_id", "usage_receipts", ["model_id"])
