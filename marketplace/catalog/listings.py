"""Which listings are offered: a listing is sold and served only once its model passed
the indexer's checks; otherwise the caller learns why not."""

from __future__ import annotations

from marketplace import errors
from marketplace.db.tables import Listing


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
