"""Which listings are offered: a listing is sold and served only once its model passed
the indexer's checks; otherwise the caller learns why not."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from marketplace import errors
from marketplace.db.tables import Listing

MAX_VERSIONS = 1000  # a chain of versions longer than this is cut, not followed


def listed(listing: Listing | None, model_id: int) -> Listing:
    """`listing` when it exists, whatever its model's status (404 otherwise)."""
    if listing is None:
        raise errors.NotFound(f"model {model_id} is not listed")
    return listing


def offered(listing: Listing | None, model_id: int) -> Listing:
    """`listing` when its model passed the indexer's checks; otherwise why not."""
    listing = listed(listing, model_id)
    if listing.model_status == "ok":
        return listing
    if listing.model_status in ("pending", "unavailable"):
        raise errors.ModelPending(
            f"model {model_id} has not been fetched and checked yet; try again shortly"
        )
    raise errors.ModelRefused(
        f"model {model_id} is not offered: its model was refused ({listing.model_status}):"
        f" {listing.model_error or 'no reason recorded'}"
    )


def versions(session: Session, listing: Listing) -> list[int]:
    """Every version of `listing`'s model, newest first: down its `supersedes` links to
    the first, then every listing that supersedes one of them (bounded)."""
    first, seen = listing.model_id, {listing.model_id}
    earlier = listing.supersedes
    while earlier is not None and earlier not in seen and len(seen) < MAX_VERSIONS:
        seen.add(earlier)
        first = earlier
        earlier = session.scalar(select(Listing.supersedes).where(Listing.model_id == earlier))
    found, frontier = {first}, [first]
    while frontier and len(found) < MAX_VERSIONS:
        later = session.scalars(
            select(Listing.model_id).where(Listing.supersedes.in_(frontier))
        ).all()
        frontier = [m for m in later if m not in found]
        found.update(frontier)
    return sorted(found, reverse=True)
