"""Reorgs: find the block where the stored chain and the canonical one part, and undo
everything the indexer applied above it (purchases revoked once, listings rebuilt from
their surviving events)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from marketplace import errors
from marketplace.chain.logs import SALES
from marketplace.db.tables import BlockHash, ChainEvent, Listing, Purchase
from marketplace.indexer.apply import apply_listing_event
from marketplace.payments.prepaid import ledger


def checkpoints(start: int, end: int, depth: int) -> set[int]:
    """The blocks whose hashes a batch over [start, end] remembers: `end` and blocks 1,
    2, 4, ... below it (down to the block before the range), so a later reorg is found
    within a factor of two of its depth without fetching every block."""
    found = {end}
    step = 1
    while end - step >= max(start - 1, 0) and step < depth:
        found.add(end - step)
        step *= 2
    found.add(max(start - 1, 0))
    return found


def find_fork(session: Session, canonical_hash: Callable[[int], str]) -> int | None:
    """The newest stored block that is still canonical, when the newest stored one is
    not; None when nothing was reorged."""
    stored = session.execute(
        select(BlockHash.number, BlockHash.hash).order_by(BlockHash.number.desc())
    ).all()
    if not stored or canonical_hash(stored[0][0]) == stored[0][1]:
        return None
    for number, block_hash in stored[1:]:
        if canonical_hash(number) == block_hash:
            return int(number)
    raise errors.ChainError(
        f"a reorg deeper than the {len(stored)} blocks the indexer remembers; re-index from scratch"
    )


def roll_back(session: Session, fork: int) -> None:
    """Undo every event above `fork`: purchases revoked (once), listings replayed from
    the events that survive, the remembered hashes above it forgotten."""
    orphaned = (
        session.execute(select(ChainEvent).where(ChainEvent.block_number > fork)).scalars().all()
    )
    touched: set[int] = set()
    for event in orphaned:
        if event.name == "Purchased":
            ledger.revoke(session, event.tx_hash, event.log_index)
        elif event.name == "PaidPerCall":  # a sale only: nothing was credited
            session.execute(
                delete(Purchase).where(
                    Purchase.tx_hash == event.tx_hash, Purchase.log_index == event.log_index
                )
            )
        else:
            touched.add(event.model_id)
    session.execute(delete(ChainEvent).where(ChainEvent.block_number > fork))
    session.execute(delete(BlockHash).where(BlockHash.number > fork))
    for model_id in touched:
        _rebuild_listing(session, model_id)


def _rebuild_listing(session: Session, model_id: int) -> None:
    """Replay a listing's surviving events (its card, if fetched, is kept)."""
    events = (
        session.execute(
            select(ChainEvent)
            .where(ChainEvent.model_id == model_id, ChainEvent.name.not_in(SALES))
            .order_by(ChainEvent.block_number, ChainEvent.log_index)
        )
        .scalars()
        .all()
    )
    listing = session.get(Listing, model_id)
    if not events or events[0].name != "ModelListed":
        if listing is not None:
            session.delete(listing)
        return
    for event in events:
        apply_listing_event(session, event.name, event.args, event.block_number)
