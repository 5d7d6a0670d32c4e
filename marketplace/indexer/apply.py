"""Decoded marketplace events into the database: each recorded once (unique by tx hash
and log index), listings updated in chain order, purchases credited through the ledger,
x402 calls (`PaidPerCall`, already served) recorded as sales and never credited. One
bad event never fails its batch."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from marketplace.chain.logs import Event
from marketplace.db.engine import insert
from marketplace.db.tables import ChainEvent, Listing, Purchase
from marketplace.payments.prepaid import ledger

log = logging.getLogger("modelmarket.indexer")


def apply_all(session: Session, decoded: list[Event]) -> int:
    """Record the events (each once) and apply the new ones, in chain order. Returns how
    many were new."""
    if not decoded:
        return 0
    rows = [
        {
            "block_number": e.block_number,
            "block_hash": e.block_hash,
            "tx_hash": e.tx_hash,
            "log_index": e.log_index,
            "name": e.name,
            "model_id": e.args["modelId"],
            # uint256 go to JSON as strings: JSON numbers lose precision past 2^53
            "args": {k: _storable_arg(v) for k, v in e.args.items()},
        }
        for e in decoded
    ]
    new = {
        (tx, index)
        for tx, index in session.execute(
            insert(session, ChainEvent)
            .on_conflict_do_nothing(index_elements=["tx_hash", "log_index"])
            .returning(ChainEvent.tx_hash, ChainEvent.log_index),
            rows,
        )
    }
    purchases, per_call = [], []
    for row, event in zip(rows, decoded, strict=True):
        if (row["tx_hash"], row["log_index"]) not in new:
            continue
        name, args = event.name, event.args
        if name == "Purchased":
            purchases.append(
                ledger.PurchaseRecord(
                    tx_hash=row["tx_hash"],
                    log_index=row["log_index"],
                    buyer=args["buyer"],
                    model_id=args["modelId"],
                    calls=args["calls"],
                    amount=args["amount"],
                    fee=args["fee"],
                    block_number=row["block_number"],
                    block_hash=row["block_hash"],
                    source="indexer",
                )
            )
        elif name == "PaidPerCall":
            per_call.append(
                {
                    "tx_hash": row["tx_hash"],
                    "log_index": row["log_index"],
                    "model_id": args["modelId"],
                    "buyer": str(args["payer"]).lower(),
                    "calls": 1,
                    "amount": args["amount"],
                    "fee": args["fee"],
                    "block_number": row["block_number"],
                    "block_hash": row["block_hash"],
                    "state": "per_call",
                    "source": "x402",
                }
            )
        else:
            try:
                with session.begin_nested():  # one bad event never fails the batch
                    apply_listing_event(session, name, row["args"], row["block_number"])
            except Exception:
                log.exception("model %s: could not apply %s", row["model_id"], name)
    ledger.credit_many(session, purchases)
    if per_call:
        session.execute(
            insert(session, Purchase).on_conflict_do_nothing(
                index_elements=["tx_hash", "log_index"]
            ),
            per_call,
        )
    return len(new)


def apply_listing_event(session: Session, name: str, args: dict[str, Any], block: int) -> None:
    """Apply one listing event (ModelListed, PriceChanged, ModelDelisted, ModelRelisted)
    to its Listing row."""
    model_id = int(args["modelId"])
    listing = session.get(Listing, model_id)
    if name == "ModelListed":
        if listing is None:
            listing = Listing(model_id=model_id, card_status="pending", tags=[])
            session.add(listing)
        listing.seller = str(args["seller"]).lower()
        listing.token = str(args["token"]).lower()
        listing.model_cid = storable_text(args["modelCid"])
        listing.metadata_cid = storable_text(args["metadataCid"])
        listing.price_per_call = int(args["pricePerCall"])
        listing.active = True
        listing.listed_block = block
        listing.updated_block = block
        return
    if listing is None:  # cannot happen on a consistent chain; never crash on it
        return
    if name == "PriceChanged":
        listing.price_per_call = int(args["newPrice"])
    elif name == "ModelDelisted":
        listing.active = False
    elif name == "ModelRelisted":
        listing.active = True
    listing.updated_block = block


def _storable_arg(value: Any) -> str:
    # uint256 go to JSON as strings: JSON numbers lose precision past 2^53
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):  # a bytes32 (an x402 nonce)
        return "0x" + value.hex()
    return storable_text(value)


def storable_text(value: Any, limit: int = 128) -> str:
    """A string from the chain (a CID) as the database can hold it. Anyone can list any
    string; one too long or with control characters (PostgreSQL refuses NUL) is kept
    escaped and marked with a leading "!", so it can never pass as a CID."""
    text = str(value)
    if len(text) <= limit and text.isascii() and text.isprintable():
        return text
    return ("!" + text.encode("unicode_escape").decode("ascii"))[:limit]
