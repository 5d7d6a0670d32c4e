"""What a seller's listings sold and served over time, for the seller dashboard's chart:
earnings by block (the chain's clock: purchases carry no timestamp) and calls served by
day. Bounded: the newest points only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from marketplace.db.tables import Listing, Purchase, Usage

MAX_POINTS = 500


@dataclass(frozen=True)
class Sales:
    """Cumulative net earnings after each block with a sale, and calls served per day."""

    earnings: list[tuple[int, int]]  # (block, earned so far, in the token's smallest unit)
    served: list[tuple[date, int]]  # (day, calls served that day)


def served_counts(session: Session, model_ids: list[int]) -> dict[int, int]:
    """Calls the gateway served, per model."""
    if not model_ids:
        return {}
    return {
        int(model_id): int(count)
        for model_id, count in session.execute(
            select(Usage.model_id, func.count())
            .where(Usage.model_id.in_(model_ids), Usage.status == "ok")
            .group_by(Usage.model_id)
        )
    }


def sales(session: Session, seller: str, token: str) -> Sales:
    """`seller`'s sales in `token` (its listings priced in it) and calls served."""
    mine = select(Listing.model_id).where(Listing.seller == seller.lower())
    by_block = session.execute(
        select(Purchase.block_number, func.sum(Purchase.amount - Purchase.fee))
        .where(
            Purchase.model_id.in_(mine.where(Listing.token == token.lower())),
            Purchase.state == "credited",
        )
        .group_by(Purchase.block_number)
        .order_by(Purchase.block_number.desc())
        .limit(MAX_POINTS)
    ).all()
    earned, total = [], 0
    for block, amount in reversed(by_block):
        total += int(amount or 0)
        earned.append((int(block), total))
    day = func.date(Usage.created_at)
    by_day = session.execute(
        select(day, func.count())
        .where(Usage.model_id.in_(mine), Usage.status == "ok")
        .group_by(day)
        .order_by(day.desc())
        .limit(MAX_POINTS)
    ).all()
    served = [(_as_date(d), int(n)) for d, n in reversed(by_day)]
    return Sales(earned, served)


def _as_date(value: object) -> date:
    # SQLite's date() gives text, PostgreSQL's a date
    return value if isinstance(value, date) else date.fromisoformat(str(value))
