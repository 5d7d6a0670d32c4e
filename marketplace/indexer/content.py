"""The content behind new listings: each listing's model card and model fetched and
checked, and what was found recorded on the listing, within a time budget per pass.
Unavailable content is fetched again with a backoff; nothing about one listing stops
the others."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

from marketplace.db.tables import Listing
from marketplace.indexer.cards import Card, parse_card
from marketplace.indexer.model_checks import ModelChecks, ModelVerdict, check_model, fetch_verified
from storage.store import ContentStore

log = logging.getLogger("modelmarket.indexer")
RETRY_FIRST, RETRY_MAX = 30.0, 3600.0  # seconds: unavailable content, fetched again


class _HasStatus(Protocol):
    @property
    def status(self) -> str: ...


# what checking a card or a model found: Card, ModelVerdict
_Outcome = TypeVar("_Outcome", bound=_HasStatus)


@dataclass(frozen=True)
class ContentChecks:
    """Where listed content comes from and how far each check may go."""

    store: ContentStore
    max_card_bytes: int = 64 * 1024
    card_timeout: float = 10.0
    models: ModelChecks = field(default_factory=ModelChecks)
    budget: float = 20.0  # seconds of fetching per pass: following the chain comes first


def fetch_cards(sessions: sessionmaker[Session], checks: ContentChecks) -> int:
    """Fetch, verify and validate pending model cards; returns how many were settled.
    A bad card marks its listing with the reason and never stops the indexer."""
    with sessions() as session:
        pending = session.execute(
            select(Listing.model_id, Listing.metadata_cid)
            .where(_due(Listing.card_status, Listing.card_retry_at))
            .order_by(Listing.model_id)
        ).all()
    return _settle_each(
        "card",
        pending,
        lambda metadata_cid: _fetch_card(checks, metadata_cid),
        lambda *found: _store_card(sessions, *found),
        Card,
        checks.budget,
    )


def check_models(sessions: sessionmaker[Session], checks: ContentChecks) -> int:
    """Fetch (verified, size-capped, with a timeout), inspect and load-probe each
    listed model not yet checked; record its status, the reason, and its signature.
    Returns how many were settled."""
    with sessions() as session:
        pending = session.execute(
            select(Listing.model_id, Listing.model_cid)
            .where(_due(Listing.model_status, Listing.model_retry_at))
            .order_by(Listing.model_id)
        ).all()
    return _settle_each(
        "model",
        pending,
        lambda model_cid: check_model(checks.store, model_cid, checks.models),
        lambda *found: _store_verdict(sessions, *found),
        ModelVerdict,
        checks.budget,
    )


def _fetch_card(checks: ContentChecks, metadata_cid: str) -> Card:
    pieces: list[bytes] = []
    failed = fetch_verified(
        checks.store,
        metadata_cid,
        "card",
        sink=pieces.append,
        max_bytes=checks.max_card_bytes,
        timeout=checks.card_timeout,
    )
    if failed is not None:
        status, reason = failed
        return Card("invalid_card" if status == "invalid_cid" else status, reason)
    return parse_card(b"".join(pieces), max_bytes=checks.max_card_bytes)


def _store_card(
    sessions: sessionmaker[Session], model_id: int, metadata_cid: str, card: Card
) -> None:
    with sessions() as session, session.begin():
        listing = session.get(Listing, model_id)
        if listing is None or listing.metadata_cid != metadata_cid:
            return
        listing.card_status, listing.card_error = card.status, card.error
        listing.card, listing.card_flags = card.data, list(card.flags)
        listing.card_attempts, listing.card_retry_at = _retry(card.status, listing.card_attempts)
        data = card.data or {}
        listing.name = data.get("name")
        listing.description = data.get("description")
        listing.license = data.get("license")
        listing.tags = list(data.get("tags", []))
        listing.supersedes = _earlier_version(session, listing, data.get("supersedes"))


def _earlier_version(session: Session, listing: Listing, claimed: object) -> int | None:
    """The card's `supersedes`, when it names an older listing of the same seller (anyone
    can claim anything in a card: another seller's model is never made a version)."""
    if not isinstance(claimed, int) or claimed >= listing.model_id:
        return None
    earlier = session.get(Listing, claimed)
    if earlier is None or earlier.seller != listing.seller:
        return None
    return claimed


def _store_verdict(
    sessions: sessionmaker[Session], model_id: int, model_cid: str, verdict: ModelVerdict
) -> None:
    with sessions() as session, session.begin():
        listing = session.get(Listing, model_id)
        if listing is None or listing.model_cid != model_cid:
            return
        listing.model_status, listing.model_error = verdict.status, verdict.error
        listing.signature = verdict.signature
        listing.model_bytes, listing.load_bytes = verdict.size, verdict.load_bytes
        listing.model_attempts, listing.model_retry_at = _retry(
            verdict.status, listing.model_attempts
        )


def _settle_each(
    what: str,
    pending: Sequence[Any],
    check: Callable[[str], _Outcome],
    record: Callable[[int, str, _Outcome], None],
    outcome: Callable[[str, str], _Outcome],
    budget: float,
) -> int:
    """Check each (model id, CID) of `pending` and record what was found, within
    `budget` seconds; returns how many were settled. A fault while checking one is
    retried later; a value the database refuses marks its listing `unstorable` (a
    transient database fault fails the pass instead, and is retried)."""
    settled = 0
    deadline = time.monotonic() + budget
    for model_id, content in pending:
        if time.monotonic() > deadline:
            break
        try:
            found = check(content)
        except Exception:  # a bug or a store fault on one never stops the rest
            log.exception("checking the %s of listing %s failed", what, model_id)
            found = outcome("unavailable", f"checking the {what} failed; it is retried")
        try:
            record(model_id, content, found)
        except DataError as exc:
            log.warning("model %s: storing its %s failed: %s", model_id, what, type(exc).__name__)
            found = outcome("unstorable", f"the database refused the {what}'s details")
            record(model_id, content, found)
        settled += found.status != "unavailable"
    return settled


def _due(status: Any, retry_at: Any) -> Any:
    """Listings whose card or model is to be fetched now: never tried, or unavailable and
    past its backoff."""
    return or_(
        status == "pending",
        and_(status == "unavailable", or_(retry_at.is_(None), retry_at <= time.time())),
    )


def _retry(status: str, attempts: int | None) -> tuple[int, float | None]:
    """(attempts, next try) after a fetch that ended in `status`."""
    if status != "unavailable":
        return 0, None
    tries = (attempts or 0) + 1
    return tries, time.time() + min(RETRY_FIRST * 2 ** (tries - 1), RETRY_MAX)
