"""receipt sequences: the domain each gateway issues its receipts under

The leading indexer now builds every gateway's batches. It hashes a gateway's receipts
under the EIP-712 domain (chain id, UsageAnchors) the gateway recorded when it took its
sequence numbers, not under its own deployment record's, which may name another
contract: a root built under the wrong domain would be anchored and prove nothing.

Revision ID: e4c7a9b1d2f0
Revises: d2f8a6c1e3b9
Create Date: 2026-12-02 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision = "e4c7a9b1d2f0"
down_revision = "d2f8a6c1e3b9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("receipt_sequences", sa.Column("chain_id", sa.BigInteger(), nullable=True))
    op.add_column("receipt_sequences", sa.Column("anchors", sa.String(length=42), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("receipt_sequences") as table:
        table.drop_column("anchors")
        table.drop_column("chain_id")
