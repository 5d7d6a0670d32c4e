"""Preparing a purchase for the buyer's wallet: calldata for `approve` and `purchase`,
and, given the buyer and a deadline, EIP-2612 permit typed data to sign instead."""

from __future__ import annotations

from typing import Any

from marketplace import errors
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import calldata
from marketplace.db.tables import Listing


def purchase_plan(
    market: Marketplace,
    listing: Listing,
    calls: int,
    *,
    buyer: str | None = None,
    deadline: int | None = None,
) -> dict[str, Any]:
    """What a wallet sends to buy `calls` calls of `listing` (uint256 values as decimal
    strings, as wallets take them: past 64 bits a JSON number is lost)."""
    if not listing.active:
        raise errors.ListingInactive(f"model {listing.model_id} is delisted: it cannot be bought")
    total = calls * listing.price_per_call
    token = market.token_contract(listing.token)
    plan: dict[str, Any] = {
        "chain_id": market.deployment.chain_id,
        "total": str(total),
        "approve": {
            "to": token.address,
            "data": calldata("approve(address,uint256)", market.contract.address, total),
        },
        "purchase": {
            "to": market.contract.address,
            "data": calldata(
                "purchase(uint256,uint256,uint256)",
                listing.model_id,
                calls,
                listing.price_per_call,
            ),
        },
    }
    if buyer and deadline:
        permit = market.permit_typed_data(buyer, total, deadline, listing.token)
        message = permit["message"]
        message |= {k: str(message[k]) for k in ("value", "nonce", "deadline")}
        plan["permit"] = permit
    return plan
