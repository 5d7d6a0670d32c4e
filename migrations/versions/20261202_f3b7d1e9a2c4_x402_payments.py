"""x402_payments: x402 authorizations reserved, settled and reconciled

Revision ID: f3b7d1e9a2c4
Revises: e5a8c2d7f190
Create Date: 2026-12-02 01:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from marketplace.db.tables import Uint256

revision = "f3b7d1e9a2c4"
down_revision = "e5a8c2d7f190"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "x402_payments",
        sa.Column("payer", sa.String(length=42), nullable=False),
        sa.Column("nonce", sa.String(length=66), nullable=False),
        sa.Column("payment_id", sa.String(length=128), nullable=True),
        sa.Column("model_id", sa.BigInteger(), nullable=False),
        sa.Column("inference_id", sa.String(length=32), nullable=False),
        sa.Column("amount", Uint256(), nullable=False),
        sa.Column("valid_after", sa.BigInteger(), nullable=False),
        sa.Column("valid_before", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("raw_tx", sa.LargeBinary(), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("payer", "nonce"),
        sa.UniqueConstraint("payer", "payment_id", name="uq_x402_payment_id"),
    )
    op.create_index("ix_x402_payments_status", "x402_payments", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_x402_payments_status", table_name="x402_payments")
    op.drop_table("x402_payments")
