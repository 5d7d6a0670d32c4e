"""Credits: a purchase credited exactly once, whichever path sees it first (the indexer
or a posted receipt), and taken back once if a reorg orphans it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import func, select, tuple_, union_all, update
from sqlalchemy.orm import Session

from marketplace.db.engine import insert
from marketplace.db.tables import Credit, CreditLease, Purchase

# A purchase of more calls than this is recorded but not credited: credits are 64-bit.
MAX_CREDITED_CALLS = 10**15
# Calls one buyer may ever hold on one model (purchased, summed): far past any real use,
# and under 2^63, so the BIGINT columns can never overflow however many capped purchases
# pile up (an overflow would fail every indexer batch from there on).
MAX_CREDIT_TOTAL = 2**62


class PurchaseRecord(NamedTuple):
    """One `Purchased` event, as the chain reported it (from a receipt or the indexer)."""

    tx_hash: str
    log_index: int
    buyer: str
    model_id: int
    calls: int
    amount: int
    fee: int
    block_number: int
    block_hash: str
    source: str  # "receipt" or "indexer"


def credit(session: Session, purchase: PurchaseRecord) -> bool:
    """Record a purchase and add its calls to (buyer, model). Returns False, changing
    nothing, when this (tx_hash, log_index) was already recorded."""
    return credit_many(session, [purchase]) == 1


def credit_many(session: Session, purchases: Sequence[PurchaseRecord]) -> int:
    """`credit` for many purchases in a few statements (the indexer's catch-up path).
    Returns how many were newly recorded (or,
    orphaned by a reorg and mined again, credited again)."""
    if not purchases:
        return 0
    rows: list[dict[str, Any]] = []
    for p in purchases:
        calls = int(p.calls)
        credited = calls if 0 < calls <= MAX_CREDITED_CALLS else 0
        rows.append(
            {
                "tx_hash": p.tx_hash.lower(),
                "log_index": p.log_index,
                "buyer": p.buyer.lower(),
                "model_id": p.model_id,
                "calls": credited,
                "amount": p.amount,
                "fee": p.fee,
                "block_number": p.block_number,
                "block_hash": p.block_hash.lower(),
                "state": "credited" if credited else "too_large",
                "source": p.source,
            }
        )
    inserted = session.execute(
        insert(session, Purchase)
        .on_conflict_do_nothing(index_elements=["tx_hash", "log_index"])
        .returning(
            Purchase.tx_hash,
            Purchase.log_index,
            Purchase.buyer,
            Purchase.model_id,
            Purchase.calls,
            sort_by_parameter_order=True,
        ),
        rows,
    ).all()
    new = {(r[0], r[1]) for r in inserted}
    totals: dict[tuple[str, int], int] = {}
    for _tx, _log, buyer, model_id, calls in inserted:
        if calls:
            totals[(buyer, model_id)] = totals.get((buyer, model_id), 0) + int(calls)
    # seen before: only purchases orphaned by a reorg and mined again count again
    again = 0
    for row in rows:
        if (row["tx_hash"], row["log_index"]) not in new:
            revived = session.execute(
                update(Purchase)
                .where(
                    Purchase.tx_hash == row["tx_hash"],
                    Purchase.log_index == row["log_index"],
                    Purchase.state == "orphaned",
                )
                .values(
                    state="credited", block_number=row["block_number"], block_hash=row["block_hash"]
                )
                .returning(Purchase.calls)
            ).scalar_one_or_none()
            if revived is not None:
                again += 1
                key = (str(row["buyer"]), int(row["model_id"]))
                totals[key] = totals.get(key, 0) + int(revived)
    _refuse_overflows(session, inserted, totals)
    if totals:
        stmt = insert(session, Credit)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["buyer", "model_id"],
                set_={
                    "remaining": Credit.remaining + stmt.excluded.remaining,
                    "purchased": Credit.purchased + stmt.excluded.purchased,
                },
            ),
            [
                {"buyer": b, "model_id": m, "remaining": n, "purchased": n}
                for (b, m), n in sorted(totals.items())
            ],
        )
    return len(new) + again


def _refuse_overflows(session: Session, inserted: Any, totals: dict[tuple[str, int], int]) -> None:
    """Drop from `totals` the credits these purchases would push past MAX_CREDIT_TOTAL,
    and mark their new purchases `too_large` (recorded, credited nothing)."""
    held = dict(
        ((buyer, model_id), int(purchased))
        for buyer, model_id, purchased in session.execute(
            select(Credit.buyer, Credit.model_id, Credit.purchased).where(
                tuple_(Credit.buyer, Credit.model_id).in_(list(totals))
            )
        )
    )
    for key in [k for k, n in totals.items() if held.get(k, 0) + n > MAX_CREDIT_TOTAL]:
        del totals[key]
        for tx_hash, log_index, buyer, model_id, _calls in inserted:
            if (buyer, model_id) == key:
                session.execute(
                    update(Purchase)
                    .where(Purchase.tx_hash == tx_hash, Purchase.log_index == log_index)
                    .values(state="too_large", calls=0)
                )


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
    """Calls `buyer` may still make on `model_id`: the credit and its open leases (calls
    served in the last moments may not be counted yet)."""
    return remaining_by_model(session, buyer).get(model_id, 0)


def remaining_by_model(session: Session, buyer: str) -> dict[int, int]:
    """`remaining` for each model `buyer` holds credits on, in one statement (one
    snapshot: a lease taken or settled meanwhile is never counted twice or missed)."""
    buyer = buyer.lower()
    held = union_all(
        select(Credit.model_id, Credit.remaining.label("calls")).where(Credit.buyer == buyer),
        select(CreditLease.model_id, (CreditLease.granted - CreditLease.used).label("calls")).where(
            CreditLease.buyer == buyer, CreditLease.settled_at.is_(None)
        ),
    ).subquery()
    rows = session.execute(
        select(held.c.model_id, func.sum(held.c.calls)).group_by(held.c.model_id)
    )
    return {int(model_id): int(calls or 0) for model_id, calls in rows}
