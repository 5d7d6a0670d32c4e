"""usage receipts: in the call's usage row, not a row of their own

A served call wrote two rows in one transaction: its usage row and its receipt. The
receipt's fields now sit in the usage row (its id, buyer and model id were already
there): one insert and one primary-key entry a call fewer, ~15 us of the database's CPU
a call on PostgreSQL (bench.receipts). Existing receipts are copied into their calls'
rows, batch ids included.

Revision ID: f1a3c5e7b9d2
Revises: e4c7a9b1d2f0
Create Date: 2026-12-03 09:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from marketplace.db.tables import Uint256

revision = "f1a3c5e7b9d2"
down_revision = "e4c7a9b1d2f0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the receipt's own fields (its inference id, buyer and model id are the usage row's)
_OWN = (
    ("gateway", sa.String(length=42)),
    ("sequence", sa.BigInteger()),
    ("model_digest", sa.String(length=66)),
    ("input_digest", sa.String(length=66)),
    ("output_digest", sa.String(length=66)),
    ("price", Uint256()),
    ("method", sa.String(length=16)),
    ("time", sa.BigInteger()),
    ("batch_id", sa.BigInteger()),
)
_UNBATCHED = "gateway IS NOT NULL AND batch_id IS NULL"


def upgrade() -> None:
    # the receipt's buyer and model id are dropped for the usage row's: they must agree,
    # or an anchored root could no longer be rebuilt from the rows
    differ = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM usage_receipts r JOIN usage u ON u.id = r.inference_id"
                " WHERE u.buyer <> r.buyer OR u.model_id <> r.model_id"
            )
        )
        .scalar_one()
    )
    orphans = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM usage_receipts r"
                " WHERE NOT EXISTS (SELECT 1 FROM usage u WHERE u.id = r.inference_id)"
            )
        )
        .scalar_one()
    )
    if differ or orphans:
        raise RuntimeError(
            f"{differ} receipts name another buyer or model than their usage row, and"
            f" {orphans} have no usage row: not merged (the receipts are kept)"
        )
    for name, type_ in _OWN:
        op.add_column("usage", sa.Column(name, type_, nullable=True))
    # one correlated subquery a column: portable (SQLite before 3.33 has no UPDATE FROM)
    sets = ", ".join(
        f"{name} = (SELECT r.{name} FROM usage_receipts r WHERE r.inference_id = usage.id)"  # noqa: S608
        for name, _ in _OWN
    )
    op.execute(
        f"UPDATE usage SET {sets}"  # noqa: S608 (constants only)
        " WHERE id IN (SELECT inference_id FROM usage_receipts)"
    )
    op.drop_index("ix_usage_receipts_unbatched", table_name="usage_receipts")
    op.drop_table("usage_receipts")
    op.create_index(
        "uq_usage_receipt_sequence",
        "usage",
        ["gateway", "sequence"],
        unique=True,
        sqlite_where=sa.text("gateway IS NOT NULL"),
        postgresql_where=sa.text("gateway IS NOT NULL"),
    )
    op.create_index(
        "ix_usage_unbatched",
        "usage",
        ["gateway", "sequence"],
        sqlite_where=sa.text(_UNBATCHED),
        postgresql_where=sa.text(_UNBATCHED),
    )


def downgrade() -> None:
    # first: the unique index's name is the old table's constraint's (PostgreSQL names
    # indexes per schema)
    op.drop_index("ix_usage_unbatched", table_name="usage")
    op.drop_index("uq_usage_receipt_sequence", table_name="usage")
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
    op.create_index(
        "ix_usage_receipts_unbatched",
        "usage_receipts",
        ["gateway", "sequence"],
        sqlite_where=sa.text("batch_id IS NULL"),
        postgresql_where=sa.text("batch_id IS NULL"),
    )
    columns = ", ".join(name for name, _ in _OWN)
    op.execute(
        f"INSERT INTO usage_receipts (inference_id, model_id, buyer, {columns})"  # noqa: S608
        f" SELECT id, model_id, buyer, {columns} FROM usage WHERE gateway IS NOT NULL"
    )
    with op.batch_alter_table("usage") as table:
        for name, _ in reversed(_OWN):
            table.drop_column(name)
