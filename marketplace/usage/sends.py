"""A built receipt batch's send: claimed by one gateway worker at a time (a worker that
died mid-send loses its claim after a while), and the chain's anchor of its root
recorded."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Row, select, update

from marketplace.db.tables import ReceiptBatch
from marketplace.usage.batches import ANCHORED, BUILT


def unsent(engine: Engine, gateway: str) -> list[Row[Any]]:
    """Built batches not anchored yet, oldest first."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(ReceiptBatch.id, ReceiptBatch.root, ReceiptBatch.count.label("receipts"))
                .where(ReceiptBatch.gateway == gateway, ReceiptBatch.state == BUILT)
                .order_by(ReceiptBatch.id)
            ).all()
        )


def claim(engine: Engine, batch: int, now: float, stale_after: float) -> bool:
    """Claim the send of `batch` for this worker at `now` (the claim's own time: the
    round may have spent long on earlier batches); False when another claimed it within
    `stale_after` seconds (a worker that died mid-send loses its claim after that)."""
    with engine.begin() as conn:
        got = conn.execute(
            update(ReceiptBatch)
            .where(
                ReceiptBatch.id == batch,
                ReceiptBatch.state == BUILT,
                (ReceiptBatch.sending_at.is_(None)) | (ReceiptBatch.sending_at < now - stale_after),
            )
            .values(sending_at=now)
        )
    return got.rowcount == 1


def release(engine: Engine, batch: int, claimed_at: float) -> None:
    """Give up our claim (the send failed; the next round tries again), not a newer one."""
    with engine.begin() as conn:
        conn.execute(
            update(ReceiptBatch)
            .where(ReceiptBatch.id == batch, ReceiptBatch.sending_at == claimed_at)
            .values(sending_at=None)
        )


def anchored(engine: Engine, batch: int, tx_hash: str | None, block: int, now: float) -> None:
    """Record that the chain holds `batch`'s root."""
    with engine.begin() as conn:
        conn.execute(
            update(ReceiptBatch)
            .where(ReceiptBatch.id == batch)
            .values(
                state=ANCHORED,
                tx_hash=tx_hash,
                block_number=block,
                anchored_at=now,
                sending_at=None,
            )
        )
