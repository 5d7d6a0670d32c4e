"""Listing search for every face (API, CLI, storefront): text, tag and price filters,
sorting, paging. Cost stays proportional to the page, not to every listing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, defer

from marketplace.db.tables import Listing

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
