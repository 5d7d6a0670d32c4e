"""The marketplace JSON API, `/api/v1/...`: sign-in, keys, models, receipts, credits,
purchase preparation. Routes parse, call the domain, and render; nothing else."""

from __future__ import annotations

import json
import re
from datetime import UTC
from typing import Any, cast

from flask import Blueprint, Response, request
from sqlalchemy import select

from marketplace import errors
from marketplace.accounts import keys as api_keys
from marketplace.accounts import siwe
from marketplace.catalog.listings import versions
from marketplace.catalog.purchase import purchase_plan
from marketplace.catalog.search import Query, Sort, by_seller, search
from marketplace.db.tables import Credit, Listing
from marketplace.payments.prepaid.redeem import redeem
from marketplace.web.openapi import BEARER, documented, marketplace_responses, spec
from marketplace.web.requests import (
    MODEL_ID,
    current_gateway,
    json_response,
    offered_listing,
    parse,
    require_key,
    the_listing,
    validated,
)
from marketplace.web.schemas import (
    Credited,
    CreditInfo,
    DeploymentInfo,
    KeyBody,
    KeyInfo,
    ListingInfo,
    ModelPage,
    ModelQuery,
    NewKey,
    Nonce,
    OpenApiDocument,
    PurchaseBody,
    PurchasePlan,
    ReceiptBody,
    RevokedKey,
    SellerListingInfo,
    VerifyBody,
)

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def listing_json(listing: Listing) -> dict[str, Any]:
    return {
        "model_id": listing.model_id,
        "seller": listing.seller,
        "model_cid": listing.model_cid,
        "metadata_cid": listing.metadata_cid,
        "token": listing.token,
        "price_per_call": str(listing.price_per_call),
        "active": listing.active,
        "name": listing.name,
        "description": listing.description,
        "license": listing.license,
        "tags": listing.tags or [],
        "card_status": listing.card_status,
        "card_error": listing.card_error,
        "card_flags": listing.card_flags or [],
        "model_status": listing.model_status,
        "model_error": listing.model_error,
        "offered": listing.active and listing.model_status == "ok",
        "listed_block": listing.listed_block,
        "supersedes": listing.supersedes,
        # calls whose usage receipts are anchored on-chain (counted every 30 s)
        "anchored_calls": current_gateway().anchored().get(listing.model_id, (0, 0))[0],
    }


# ------------------------------------------------------------------- routes


@blueprint.get("/deployment")
@documented(resp=marketplace_responses({200: DeploymentInfo}), tags=["marketplace"])
def deployment() -> Response:
    """Chain id and contract addresses, for wallets and clients."""
    record = current_gateway().deployment
    return json_response(
        {
            "chain_id": record.chain_id,
            "marketplace": record.marketplace,
            "token": record.token,
            "start_block": record.start_block,
        }
    )


@blueprint.post("/auth/nonce")
@documented(resp=marketplace_responses({200: Nonce}), tags=["auth"])
def nonce() -> Response:
    """A single-use nonce for a Sign-In with Ethereum message, and what the message must
    name (domain, URI, chain)."""
    gateway = current_gateway()
    terms = gateway.siwe_terms
    return json_response(
        {
            "nonce": siwe.issue_nonce(gateway.secret),
            "domain": terms.domain,
            "uri": terms.origin,
            "chain_id": terms.chain_id,
        }
    )


@blueprint.post("/auth/verify")
@documented(
    json=VerifyBody,
    resp=marketplace_responses({201: NewKey}, 400, 401, 503),
    tags=["auth"],
)
def verify() -> Response:
    """Check a signed SIWE message; returns a new API key (shown once)."""
    body = parse(VerifyBody)
    gateway = current_gateway()
    with gateway.sessions() as s, s.begin():
        address = siwe.verify_siwe(
            s, body.message, body.signature, terms=gateway.siwe_terms, secret=gateway.secret
        )
        key, text = api_keys.create_key(s, address, body.key_name)
    return json_response({"address": address, "key_id": key.id, "api_key": text}, 201)


@blueprint.get("/keys")
@documented(resp=marketplace_responses({200: list[KeyInfo]}, 401), security=BEARER, tags=["auth"])
def keys() -> Response:
    """The caller's API keys (never their secrets)."""
    key = require_key()
    with current_gateway().sessions() as s:
        rows = api_keys.list_keys(s, key.address)
    return json_response(
        [
            {
                "key_id": k.id,
                "name": k.name,
                # SQLite gives back a naive datetime; it was written in UTC
                "created_at": k.created_at.replace(tzinfo=k.created_at.tzinfo or UTC).isoformat(),
                "revoked": k.revoked_at is not None,
            }
            for k in rows
        ]
    )


@blueprint.post("/keys")
@documented(
    json=KeyBody,
    resp=marketplace_responses({201: NewKey}, 400, 401, 403),
    security=BEARER,
    tags=["auth"],
)
def create_key() -> Response:
    """Another API key for the caller's address (shown once)."""
    key = require_key()
    body = parse(KeyBody)
    with current_gateway().sessions() as s, s.begin():
        row, text = api_keys.create_key(s, key.address, body.name)
    return json_response({"address": key.address, "key_id": row.id, "api_key": text}, 201)


@blueprint.delete("/keys/<key_id>")
@documented(resp=marketplace_responses({200: RevokedKey}, 401, 404), security=BEARER, tags=["auth"])
def revoke(key_id: str) -> Response:
    """Revoke one of the caller's keys."""
    key = require_key()
    gateway = current_gateway()
    with gateway.sessions() as s, s.begin():
        api_keys.revoke_key(s, key.address, key_id)
    gateway.keys.forget(key_id)
    return json_response({"key_id": key_id, "revoked": True})


@blueprint.get("/models")
@documented(
    query=ModelQuery, resp=marketplace_responses({200: ModelPage}, 400), tags=["marketplace"]
)
def models() -> Response:
    """Listed models: search by text or tag, filter by price, sort, paginate."""
    q = validated(ModelQuery, request.args.to_dict())
    query = Query(
        text=q.q,
        tag=q.tag,
        min_price=q.min_price,
        max_price=q.max_price,
        sort=cast(Sort, q.sort),
        page=q.page,
        per_page=q.per_page,
    )
    with current_gateway().reads() as s:
        found = search(s, query)
        models = [listing_json(listing) for listing in found.listings]
    return json_response(
        {"total": found.total, "page": q.page, "per_page": q.per_page, "models": models}
    )


@blueprint.get("/sellers/<address>/models")
@documented(resp=marketplace_responses({200: list[SellerListingInfo]}, 400), tags=["marketplace"])
def seller_models(address: str) -> Response:
    """A seller's listings, offered or not, with the calls each sold and served."""
    if not ADDRESS.fullmatch(address):
        raise errors.BadRequest("address: must be 0x and 40 hex digits")
    with current_gateway().reads() as s:
        rows = by_seller(s, address)
        body = [
            {**listing_json(r.listing), "calls_sold": r.calls_sold, "calls_served": r.calls_served}
            for r in rows
        ]
    return json_response(body)


@blueprint.get(f"/models/{MODEL_ID}")
@documented(resp=marketplace_responses({200: ListingInfo}, 404), tags=["marketplace"])
def model(model_id: int) -> Response:
    """One listing with its model card and its versions."""
    listing = the_listing(model_id)
    with current_gateway().reads() as s:
        every = versions(s, listing)
    return json_response({**listing_json(listing), "versions": every})


@blueprint.post(f"/models/{MODEL_ID}/purchase")
@documented(
    json=PurchaseBody,
    resp=marketplace_responses({200: PurchasePlan}, 400, 404, 409, 503),
    tags=["marketplace"],
)
def prepare_purchase(model_id: int) -> Response:
    """Calldata for approve + purchase (and, given a buyer and deadline, permit typed data)."""
    body = parse(PurchaseBody)
    listing = offered_listing(model_id)
    plan = purchase_plan(
        current_gateway().market, listing, body.calls, buyer=body.buyer, deadline=body.deadline
    )
    return json_response(plan)


@blueprint.post("/receipts")
@documented(
    json=ReceiptBody,
    resp=marketplace_responses({201: Credited}, 400, 401, 403, 404, 409, 503),
    security=BEARER,
    tags=["payments"],
)
def post_receipt() -> Response:
    """Redeem a purchase transaction for calls (the caller must be its buyer)."""
    key = require_key()
    body = parse(ReceiptBody)
    gateway = current_gateway()
    market = gateway.market
    with gateway.sessions() as s, s.begin():
        done = redeem(
            s,
            market.w3,
            market,
            body.tx_hash,
            key.address,
            confirmations=gateway.settings.confirmations,
        )
    return json_response(
        {
            "credited": [
                {"model_id": r.model_id, "calls": r.calls, "remaining": r.remaining} for r in done
            ]
        },
        201,
    )


@blueprint.get("/credits")
@documented(
    resp=marketplace_responses({200: list[CreditInfo]}, 401), security=BEARER, tags=["payments"]
)
def credits() -> Response:
    """The caller's calls left, per model."""
    key = require_key()
    gateway = current_gateway()
    with gateway.reads() as s:
        rows = s.execute(select(Credit).where(Credit.buyer == key.address)).scalars().all()
        left = gateway.prepaid.calls_left(s, key.address)
        return json_response(
            [
                {"model_id": c.model_id, "remaining": left[c.model_id], "purchased": c.purchased}
                for c in rows
            ]
        )


@blueprint.get("/openapi.json")
@documented(resp=marketplace_responses({200: OpenApiDocument}), tags=["marketplace"])
def openapi() -> Response:
    """This API's OpenAPI document (generated)."""
    # the stdlib's encoder: the document's bounds include uint256 (orjson stops at 64 bits)
    return Response(json.dumps(spec.spec), mimetype="application/json")
