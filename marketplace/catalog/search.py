"""Listing search for every face (API, CLI, storefront): text, tag and price filters,
sorting, paging. Cost stays proportional to the page, not to every listing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, defer

from marketplace.catalog.sales import Served, served_counts
from marketplace.db.tables import SOLD, Listing, Purchase

Sort = Literal["newest", "price_asc", "price_desc", "name"]


@dataclass(frozen=True)
class Query:
    """What to look for; every field optional but the paging."""

    text: str | None = None
    tag: str | None = None
    min_price: int | None = None
    max_price: int | None = None
    sort: Sort = "newest"
    page: int = 1
    per_page: int = 20


@dataclass(frozen=True)
class Page:
    """One page of offered listings and how many match in all."""

    total: int
    listings: list[Listing]


def search(session: Session, q: Query) -> Page:
    """Offered, active listings matching `q`: matching ids first (tags filter the same
    way on SQLite and PostgreSQL, in Python), whole rows for the page only, without the
    card and signature documents."""
    where = [Listing.active.is_(True), Listing.model_status == "ok"]
    if q.text:
        like = "%" + re.sub(r"([\\%_])", r"\\\1", q.text.lower()) + "%"
        where.append(
            or_(Listing.name.ilike(like, escape="\\"), Listing.description.ilike(like, escape="\\"))
        )
    if q.min_price is not None:
        where.append(Listing.price_per_call >= q.min_price)
    if q.max_price is not None:
        where.append(Listing.price_per_call <= q.max_price)
    order: Any = {
        "newest": Listing.model_id.desc(),
        "price_asc": Listing.price_per_call.asc(),
        "price_desc": Listing.price_per_call.desc(),
        "name": Listing.name.asc(),
    }[q.sort]
    start = (q.page - 1) * q.per_page
    if q.tag:
        matches = session.execute(
            select(Listing.model_id, Listing.tags).where(*where).order_by(order, Listing.model_id)
        ).all()
        ids = [m.model_id for m in matches if q.tag in (m.tags or [])]
        total, page_ids = len(ids), ids[start : start + q.per_page]
    else:
        total = session.scalar(select(func.count()).select_from(Listing).where(*where)) or 0
        page_ids = list(
            session.scalars(
                select(Listing.model_id)
                .where(*where)
                .order_by(order, Listing.model_id)
                .offset(start)
                .limit(q.per_page)
            )
        )
    rows = {
        r.model_id: r
        for r in session.scalars(
            select(Listing)
            .options(defer(Listing.card), defer(Listing.signature))
            .where(Listing.model_id.in_(page_ids))
        )
    }
    return Page(total, [rows[i] for i in page_ids])


@dataclass(frozen=True)
class SellerListing:
    """One of a seller's listings, whatever its state, with what it sold and served."""

    listing: Listing
    calls_sold: int
    calls_served: int


def by_seller(
    session: Session, seller: str, limit: int = 1000, served: Served | None = None
) -> list[SellerListing]:
    """A seller's listings, newest first (offered or not: the seller sees why not), each
    with the calls bought on-chain and the calls the gateway served (from `served` when
    given, a recent count of every model's)."""
    rows = session.scalars(
        select(Listing)
        .options(defer(Listing.card), defer(Listing.signature))
        .where(Listing.seller == seller.lower())
        .order_by(Listing.model_id.desc())
        .limit(limit)
    ).all()
    ids = [r.model_id for r in rows]
    sold = {
        int(model_id): int(calls or 0)
        for model_id, calls in session.execute(
            select(Purchase.model_id, func.sum(Purchase.calls))
            .where(Purchase.model_id.in_(ids), Purchase.state.in_(SOLD))
            .group_by(Purchase.model_id)
        )
    }
    served_now = served.counts(ids) if served is not None else served_counts(session, ids)
    return [SellerListing(r, sold.get(r.model_id, 0), served_now.get(r.model_id, 0)) for r in rows]


def popular_tags(session: Session, limit: int = 20, scan: int = 2000) -> list[str]:
    """The most used tags among offered listings (the newest `scan` listings)."""
    counts: dict[str, int] = {}
    for tags in session.scalars(
        select(Listing.tags)
        .where(Listing.active.is_(True), Listing.model_status == "ok")
        .order_by(Listing.model_id.desc())
        .limit(scan)
    ):
        for tag in tags or []:
            counts[tag] = counts.get(tag, 0) + 1
    return sorted(counts, key=lambda t: (-counts[t], t))[:limit]
