"""The marketplace JSON API, `/api/v1/...`: sign-in, keys, models, receipts, credits,
purchase preparation. Routes parse, call the domain, and render; nothing else."""

from __future__ import annotations

import json
import re
from datetime import UTC
from typing import Any, TypeVar

import orjson
from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.orm import defer
from werkzeug.exceptions import RequestEntityTooLarge

from marketplace import auth, chain, errors, ledger, receipts
from marketplace.models import ApiKey, Credit, Listing
from marketplace.openapi import BEARER, documented, marketplace_responses, spec
from marketplace.schemas import (
    Credited,
    CreditInfo,
    DeploymentInfo,
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
    VerifyBody,
)
from marketplace.services import Gateway

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
# A model id in a route: the database keeps it in 64 signed bits, so a larger one is no
# listing (404 from the router) rather than an overflow in the query.
MODEL_ID = f"<int(max={2**63 - 1}):model_id>"
M = TypeVar("M", bound=BaseModel)


# ------------------------------------------------------------------ helpers


def current_gateway() -> Gateway:
    """The app's Gateway (built once by create_app)."""
    gateway: Gateway = current_app.extensions["modelmarket"]
    return gateway


def json_response(body: Any, status: int = 200) -> Response:
    """JSON via orjson (uint256 amounts are sent as strings by the callers)."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def parse(model: type[M]) -> M:
    """The request's JSON body as `model`; BadRequest naming the first bad field."""
    try:
        return model.model_validate(request.get_json(force=True, silent=False) or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise errors.BadRequest(f"{where}: {first['msg']}") from None
    except RequestEntityTooLarge:
        raise
    except Exception:
        raise errors.BadRequest("the body must be JSON") from None


def require_key(gateway: Gateway | None = None) -> ApiKey:
    """The caller's live API key (401 otherwise)."""
    header = request.headers.get("Authorization", "")
    bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
    return (gateway or current_gateway()).keys.authenticate(bearer)


def the_listing(model_id: int, gateway: Gateway | None = None) -> Listing:
    """A listed model (404 otherwise), whatever its model's status."""
    listing = (gateway or current_gateway()).listing(model_id)
    if listing is None:
        raise errors.NotFound(f"model {model_id} is not listed")
    return listing


def offered_listing(model_id: int, gateway: Gateway | None = None) -> Listing:
    """A listed model whose model passed the indexer's checks; otherwise why not (only
    such listings are sold or served)."""
    listing = the_listing(model_id, gateway)
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


def accepts(listing: Listing) -> list[dict[str, object]]:
    """x402-style payment requirements for `listing`: what to call, then what to post.
    None for a delisted listing: the contract sells it no more."""
    if not listing.active:
        return []
    dep = current_gateway().deployment
    return [
        {
            "scheme": "prepaid-credits",
            "network": f"eip155:{dep.chain_id}",
            "chain_id": dep.chain_id,
            "marketplace": dep.marketplace,
            "model_id": listing.model_id,
            "token": listing.token,
            "price_per_call": str(listing.price_per_call),
            "calls": [
                {
                    "to": listing.token,
                    "function": "approve(address,uint256)",
                    "args": [dep.marketplace, "<calls * price_per_call>"],
                },
                {
                    "to": dep.marketplace,
                    "function": "purchase(uint256,uint256,uint256)",
                    "args": [listing.model_id, "<calls>", str(listing.price_per_call)],
                },
            ],
            "then": {"method": "POST", "path": "/api/v1/receipts", "body": {"tx_hash": "<hash>"}},
            "prepare": f"/api/v1/models/{listing.model_id}/purchase",
        }
    ]


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
    }


# ------------------------------------------------------------------- routes


@blueprint.get("/deployment")
@documented(resp=marketplace_responses({200: DeploymentInfo}), tags=["marketplace"])
def deployment() -> Response:
    """Chain id and contract addresses, for wallets and clients."""
    try:
        record = current_gateway().deployment
    except errors.ConfigurationError:  # its text names a path on the server
        raise errors.ConfigurationError(
            "the gateway has no deployment record: its operator must deploy first"
        ) from None
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
    """A single-use nonce for a Sign-In with Ethereum message."""
    return json_response({"nonce": auth.issue_nonce(current_gateway().secret)})


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
        address = auth.verify_siwe(
            s, body.message, body.signature, terms=gateway.siwe_terms, secret=gateway.secret
        )
        key, text = auth.create_key(s, address, body.key_name)
    return json_response({"address": address, "key_id": key.id, "api_key": text}, 201)


@blueprint.get("/keys")
@documented(resp=marketplace_responses({200: list[KeyInfo]}, 401), security=BEARER, tags=["auth"])
def keys() -> Response:
    """The caller's API keys (never their secrets)."""
    key = require_key()
    with current_gateway().sessions() as s:
        rows = auth.list_keys(s, key.address)
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


@blueprint.delete("/keys/<key_id>")
@documented(resp=marketplace_responses({200: RevokedKey}, 401, 404), security=BEARER, tags=["auth"])
def revoke(key_id: str) -> Response:
    """Revoke one of the caller's keys."""
    key = require_key()
    gateway = current_gateway()
    with gateway.sessions() as s, s.begin():
        auth.revoke_key(s, key.address, key_id)
    gateway.keys.forget(key_id)
    return json_response({"key_id": key_id, "revoked": True})


@blueprint.get("/models")
@documented(
    query=ModelQuery, resp=marketplace_responses({200: ModelPage}, 400), tags=["marketplace"]
)
def models() -> Response:
    """Listed models: search by text or tag, filter by price, sort, paginate."""
    try:
        q = ModelQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise errors.BadRequest(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    # Cost stays proportional to the page, not to every listing: matching ids (and tags,
    # which filter the same way on SQLite and PostgreSQL in Python) first, whole rows for
    # the page only, without the card and signature documents.
    where = [Listing.active.is_(True), Listing.model_status == "ok"]
    if q.q:
        like = "%" + re.sub(r"([\\%_])", r"\\\1", q.q.lower()) + "%"
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
    with current_gateway().reads() as s:
        if q.tag:
            matches = s.execute(
                select(Listing.model_id, Listing.tags)
                .where(*where)
                .order_by(order, Listing.model_id)
            ).all()
            ids = [m.model_id for m in matches if q.tag in (m.tags or [])]
            total, page_ids = len(ids), ids[start : start + q.per_page]
        else:
            total = s.scalar(select(func.count()).select_from(Listing).where(*where)) or 0
            page_ids = list(
                s.scalars(
                    select(Listing.model_id)
                    .where(*where)
                    .order_by(order, Listing.model_id)
                    .offset(start)
                    .limit(q.per_page)
                )
            )
        rows = {
            r.model_id: r
            for r in s.scalars(
                select(Listing)
                .options(defer(Listing.card), defer(Listing.signature))
                .where(Listing.model_id.in_(page_ids))
            )
        }
        models = [listing_json(rows[i]) for i in page_ids]
    return json_response({"total": total, "page": q.page, "per_page": q.per_page, "models": models})


@blueprint.get(f"/models/{MODEL_ID}")
@documented(resp=marketplace_responses({200: ListingInfo}, 404), tags=["marketplace"])
def model(model_id: int) -> Response:
    """One listing with its model card."""
    return json_response(listing_json(the_listing(model_id)))


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
    if not listing.active:
        raise errors.ListingInactive(f"model {model_id} is delisted: it cannot be bought")
    market = current_gateway().market
    total = body.calls * listing.price_per_call
    token = market.token_contract(listing.token)
    result: dict[str, Any] = {
        "chain_id": market.deployment.chain_id,
        "total": str(total),
        "approve": {
            "to": token.address,
            "data": chain.calldata("approve(address,uint256)", market.contract.address, total),
        },
        "purchase": {
            "to": market.contract.address,
            "data": chain.calldata(
                "purchase(uint256,uint256,uint256)", model_id, body.calls, listing.price_per_call
            ),
        },
    }
    if body.buyer and body.deadline:
        permit = market.permit_typed_data(body.buyer, total, body.deadline, listing.token)
        # its uint256 values as decimal strings, as wallets take them (past 64 bits a JSON
        # number is lost, and orjson refuses it)
        message = permit["message"]
        message |= {k: str(message[k]) for k in ("value", "nonce", "deadline")}
        result["permit"] = permit
    return json_response(result)


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
        done = receipts.redeem(
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
    gateway.payments.flush()  # this worker's latest calls count too
    with gateway.sessions() as s:
        rows = s.execute(select(Credit).where(Credit.buyer == key.address)).scalars().all()
        left = ledger.remaining_by_model(s, key.address)
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
