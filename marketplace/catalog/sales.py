"""What listings sold and served over time, for the storefront: earnings by block (the
chain's clock: purchases carry no timestamp) and calls served per model and per day.
Amounts are summed in Python: uint256 values do not fit SQLite's integers."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from marketplace.db.tables import SOLD, Listing, Purchase, Usage

MAX_POINTS = 500
SERVED_DAYS = 60


@dataclass(frozen=True)
class Served:
    """Calls served: in all per model, and per model per day for the last days."""

    total: dict[int, int]
    daily: dict[int, dict[date, int]]

    def counts(self, model_ids: list[int]) -> dict[int, int]:
        """Calls served per model, for these models."""
        return {m: self.total.get(m, 0) for m in model_ids}

    def by_day(self, model_ids: list[int]) -> list[tuple[date, int]]:
        """Calls served per day over these models, oldest first."""
        days: dict[date, int] = defaultdict(int)
        for m in model_ids:
            for day, n in self.daily.get(m, {}).items():
                days[day] += n
        return sorted(days.items())


def served(session: Session, now: datetime) -> Served:
    """Every model's calls served: two grouped reads of the usage table (the storefront
    keeps the answer a while: it is the same for every visitor)."""
    total = {
        int(m): int(n)
        for m, n in session.execute(
            select(Usage.model_id, func.count())
            .where(Usage.status == "ok")
            .group_by(Usage.model_id)
        )
    }
    day = func.date(Usage.created_at)
    daily: dict[int, dict[date, int]] = defaultdict(dict)
    for m, d, n in session.execute(
        select(Usage.model_id, day, func.count())
        .where(Usage.status == "ok", Usage.created_at >= now - timedelta(days=SERVED_DAYS))
        .group_by(Usage.model_id, day)
    ):
        daily[int(m)][_as_date(d)] = int(n)
    return Served(total, dict(daily))


def served_counts(session: Session, model_ids: list[int]) -> dict[int, int]:
    """Calls the gateway served, per model (a direct read, for one seller's listings)."""
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


def earnings(session: Session, seller: str, token: str) -> list[tuple[int, int]]:
    """`seller`'s cumulative net earnings in `token` after each block with a sale (the
    newest `MAX_POINTS` sales; the total counts every sale)."""
    mine = select(Listing.model_id).where(
        Listing.seller == seller.lower(), Listing.token == token.lower()
    )
    rows = session.execute(
        select(Purchase.block_number, Purchase.amount, Purchase.fee)
        .where(Purchase.model_id.in_(mine), Purchase.state.in_(SOLD))
        .order_by(Purchase.block_number)
    ).all()
    by_block: dict[int, int] = {}
    for block, amount, fee in rows:
        by_block[int(block)] = by_block.get(int(block), 0) + int(amount) - int(fee)
    points, total = [], 0
    for block in sorted(by_block):
        total += by_block[block]
        points.append((block, total))
    return points[-MAX_POINTS:]


def _as_date(value: object) -> date:
    # SQLite's date() gives text, PostgreSQL's a date
    return value if isinstance(value, date) else date.fromisoformat(str(value))
