"""listings: the model's status (fetched, inspected, load-probed), its signature, card
flags; indexer_state: the follower's heartbeat and last error

Revision ID: 7a1c9e5d3b20
Revises: 0d5e7e259eab
Create Date: 2026-12-01 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision = "7a1c9e5d3b20"
down_revision = "0d5e7e259eab"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("listings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("card_flags", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(
            sa.Column(
                "model_status", sa.String(length=32), server_default="pending", nullable=False
            )
        )
        batch_op.add_column(sa.Column("model_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("signature", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("model_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("load_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("card_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("card_retry_at", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("model_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("model_retry_at", sa.Float(), nullable=True))
        batch_op.alter_column(
            "card_status", existing_type=sa.String(length=16), type_=sa.String(length=32)
        )
        batch_op.create_index(
            batch_op.f("ix_listings_model_status"), ["model_status"], unique=False
        )

    with op.batch_alter_table("siwe_nonces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_siwe_nonces_expires_at"), ["expires_at"], unique=False)
    # cards accepted before the text rules are checked again under them
    op.execute("UPDATE listings SET card_status = 'pending' WHERE card_status = 'ok'")
    with op.batch_alter_table("indexer_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("failures", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("siwe_nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_siwe_nonces_expires_at"))
    with op.batch_alter_table("indexer_state", schema=None) as batch_op:
        batch_op.drop_column("failures")
        batch_op.drop_column("last_error")
        batch_op.drop_column("heartbeat_at")
    with op.batch_alter_table("listings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_listings_model_status"))
        batch_op.alter_column(
            "card_status", existing_type=sa.String(length=32), type_=sa.String(length=16)
        )
        batch_op.drop_column("model_retry_at")
        batch_op.drop_column("model_attempts")
        batch_op.drop_column("card_retry_at")
        batch_op.drop_column("card_attempts")
        batch_op.drop_column("load_bytes")
        batch_op.drop_column("model_bytes")
        batch_op.drop_column("signature")
        batch_op.drop_column("model_error")
        batch_op.drop_column("model_status")
        batch_op.drop_column("card_flags")
