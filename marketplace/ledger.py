"""Credits: a purchase credited exactly once, whichever path sees it first (the indexer
or a posted receipt), and taken back once if a reorg orphans it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from marketplace.models import Credit, Purchase

# A purchase of more calls than this is recorded but not credited: credits are 64-bit.
MAX_CREDITED_CALLS = 10**15


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def credit(
    session: Session,
    *,
    tx_hash: str,
    log_index: int,
    buyer: str,
    model_id: int,
    calls: int,
    amount: int,
    fee: int,
    block_number: int,
    block_hash: str,
    source: str,
) -> bool:
    """Record a purchase and add its calls to (buyer, model). Returns False, changing
    nothing, when this (tx_hash, log_index) was already recorded."""
    credited = calls if 0 < calls <= MAX_CREDITED_CALLS else 0
    inserted = session.execute(
        _insert(session, Purchase)
        .values(
            tx_hash=tx_hash.lower(),
            log_index=log_index,
            buyer=buyer.lower(),
            model_id=model_id,
            calls=credited,
            amount=amount,
            fee=fee,
            block_number=block_number,
            block_hash=block_hash.lower(),
            state="credited" if credited else "too_large",
            source=source,
        )
        .on_conflict_do_nothing(index_elements=["tx_hash", "log_index"])
        .returning(Purchase.id)
    ).scalar_one_or_none()
    if inserted is None:
        # Seen before. Only a purchase orphaned by a reorg and mined again counts again.
        revived = session.execute(
            update(Purchase)
            .where(
                Purchase.tx_hash == tx_hash.lower(),
                Purchase.log_index == log_index,
                Purchase.state == "orphaned",
            )
            .values(state="credited", block_number=block_number, block_hash=block_hash.lower())
            .returning(Purchase.calls)
        ).scalar_one_or_none()
        if revived is None:
            return False
        credited = int(revived)
    if credited:
        stmt = _insert(session, Credit).values(
            buyer=buyer.lower(), model_id=model_id, remaining=credited, purchased=credited
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["buyer", "model_id"],
                set_={
                    "remaining": Credit.remaining + stmt.excluded.remaining,
                    "purchased": Credit.purchased + stmt.excluded.purchased,
                },
            )
        )
    return True


def revoke(session: Session, tx_hash: str, log_index: int) -> bool:
    """Take back an orphaned purchase's calls once; False if there was nothing to take."""
    purchase = session.execute(
        update(Purchase)
        .where(
            Purchase.tx_hash == tx_hash.lower(),
            Purchase.log_index == log_index,
            Purchase.state == "credited",
        )
        .values(state="orphaned")
        .returning(Purchase.buyer, Purchase.model_id, Purchase.calls)
    ).one_or_none()
    if purchase is None:
        return False
    buyer, model_id, calls = purchase
    session.execute(
        update(Credit)
        .where(Credit.buyer == buyer, Credit.model_id == model_id)
        .values(remaining=Credit.remaining - calls, purchased=Credit.purchased - calls)
    )
    return True


def remaining(session: Session, buyer: str, model_id: int) -> int:
    """Calls `buyer` may still make on `model_id`."""
    value = session.execute(
        select(Credit.remaining).where(Credit.buyer == buyer.lower(), Credit.model_id == model_id)
    ).scalar_one_or_none()
    return int(value or 0)
