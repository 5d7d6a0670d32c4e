"""The marketplace JSON API, `/api/v1/...`: sign-in, keys, models, receipts, credits,
purchase preparation. Routes parse, call the domain, and render; nothing else."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, Field, ValidationError
from spectree import Response as Responses
from sqlalchemy import or_, select

from marketplace import auth, chain, errors, ledger, receipts
from marketplace.models import ApiKey, Credit, Listing
from marketplace.openapi import spec
from marketplace.services import Gateway

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
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
    except Exception:
        raise errors.BadRequest("the body must be JSON") from None


def require_key(gateway: Gateway | None = None) -> ApiKey:
    """The caller's live API key (401 otherwise)."""
    header = request.headers.get("Authorization", "")
    bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
    return (gateway or current_gateway()).keys.authenticate(bearer)


def the_listing(model_id: int, gateway: Gateway | None = None) -> Listing:
    """A listed model (404 otherwise)."""
    listing = (gateway or current_gateway()).listing(model_id)
    if listing is None:
        raise errors.NotFound(f"model {model_id} is not listed")
    return listing


def accepts(listing: Listing) -> list[dict[str, object]]:
    """x402-style payment requirements for `listing`: what to call, then what to post."""
    dep = current_gateway().market.deployment
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
        "listed_block": listing.listed_block,
    }


# ------------------------------------------------------------------- bodies


class ErrorBody(BaseModel):
    error: str
    message: str


class VerifyBody(BaseModel):
    message: str = Field(description="The EIP-4361 message the wallet signed")
    signature: str = Field(description="0x-prefixed signature")
    key_name: str = Field(default="default", max_length=100)


class ReceiptBody(BaseModel):
    tx_hash: str = Field(description="The purchase transaction's hash")


class PurchaseBody(BaseModel):
    calls: int = Field(gt=0, le=10**15)
    buyer: str | None = Field(default=None, description="for permit typed data")
    deadline: int | None = None


class ModelQuery(BaseModel):
    q: str | None = None
    tag: str | None = None
    min_price: int | None = Field(default=None, ge=0)
    max_price: int | None = Field(default=None, ge=0)
    sort: str = Field(default="newest", pattern="^(newest|price_asc|price_desc|name)$")
    page: int = Field(default=1, ge=1)
    per_page: int = Field(default=20, ge=1, le=100)


ERRORS = {"HTTP_400": ErrorBody, "HTTP_401": ErrorBody, "HTTP_404": ErrorBody}


# ------------------------------------------------------------------- routes


@blueprint.get("/deployment")
@spec.validate(tags=["marketplace"])
def deployment() -> Response:
    """Chain id and contract addresses, for wallets and clients."""
    settings = current_gateway().settings
    record = chain.Deployment.load(settings.deployment_path)
    return json_response(
        {
            "chain_id": record.chain_id,
            "marketplace": record.marketplace,
            "token": record.token,
            "start_block": record.start_block,
        }
    )


@blueprint.post("/auth/nonce")
@spec.validate(tags=["auth"])
def nonce() -> Response:
    """A single-use nonce for a Sign-In with Ethereum message."""
    with current_gateway().sessions() as s, s.begin():
        value = auth.issue_nonce(s)
    return json_response({"nonce": value})


@blueprint.post("/auth/verify")
@spec.validate(
    json=VerifyBody, resp=Responses(HTTP_401=ErrorBody), tags=["auth"], skip_validation=True
)
def verify() -> Response:
    """Check a signed SIWE message; returns a new API key (shown once)."""
    body = parse(VerifyBody)
    gateway = current_gateway()
    with gateway.sessions() as s, s.begin():
        address = auth.verify_siwe(
            s,
            body.message,
            body.signature,
            domain=request.host,
            chain_id=gateway.market.deployment.chain_id,
        )
        key, text = auth.create_key(s, address, body.key_name)
    return json_response({"address": address, "key_id": key.id, "api_key": text}, 201)


@blueprint.get("/keys")
@spec.validate(resp=Responses(HTTP_401=ErrorBody), tags=["auth"])
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
                "created_at": k.created_at.isoformat(),
                "revoked": k.revoked_at is not None,
            }
            for k in rows
        ]
    )


@blueprint.delete("/keys/<key_id>")
@spec.validate(resp=Responses(HTTP_401=ErrorBody, HTTP_404=ErrorBody), tags=["auth"])
def revoke(key_id: str) -> Response:
    """Revoke one of the caller's keys."""
    key = require_key()
    gateway = current_gateway()
    with gateway.sessions() as s, s.begin():
        auth.revoke_key(s, key.address, key_id)
    gateway.keys.forget(key_id)
    return json_response({"key_id": key_id, "revoked": True})


@blueprint.get("/models")
@spec.validate(query=ModelQuery, tags=["marketplace"], skip_validation=True)
def models() -> Response:
    """Listed models: search by text or tag, filter by price, sort, paginate."""
    try:
        q = ModelQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise errors.BadRequest(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    stmt = select(Listing).where(Listing.active.is_(True))
    if q.q:
        like = f"%{q.q.lower()}%"
        stmt = stmt.where(or_(Listing.name.ilike(like), Listing.description.ilike(like)))
    if q.min_price is not None:
        stmt = stmt.where(Listing.price_per_call >= q.min_price)
    if q.max_price is not None:
        stmt = stmt.where(Listing.price_per_call <= q.max_price)
    order: Any = {
        "newest": Listing.model_id.desc(),
        "price_asc": Listing.price_per_call.asc(),
        "price_desc": Listing.price_per_call.desc(),
        "name": Listing.name.asc(),
    }[q.sort]
    with current_gateway().sessions() as s:
        rows = list(s.execute(stmt.order_by(order, Listing.model_id)).scalars())
    if q.tag:  # JSON arrays filter the same way on SQLite and PostgreSQL here
        rows = [r for r in rows if q.tag in (r.tags or [])]
    start = (q.page - 1) * q.per_page
    page = rows[start : start + q.per_page]
    return json_response(
        {
            "total": len(rows),
            "page": q.page,
            "per_page": q.per_page,
            "models": [listing_json(r) for r in page],
        }
    )


@blueprint.get("/models/<int:model_id>")
@spec.validate(resp=Responses(HTTP_404=ErrorBody), tags=["marketplace"])
def model(model_id: int) -> Response:
    """One listing with its model card."""
    return json_response(listing_json(the_listing(model_id)))


@blueprint.post("/models/<int:model_id>/purchase")
@spec.validate(json=PurchaseBody, tags=["marketplace"], skip_validation=True)
def prepare_purchase(model_id: int) -> Response:
    """Calldata for approve + purchase (and, given a buyer and deadline, permit typed data)."""
    body = parse(PurchaseBody)
    listing = the_listing(model_id)
    market = current_gateway().market
    total = body.calls * listing.price_per_call
    token = market.token_contract(listing.token)
    result: dict[str, Any] = {
        "chain_id": market.deployment.chain_id,
        "total": str(total),
        "approve": {
            "to": token.address,
            "data": token.encode_abi("approve", args=[market.contract.address, total]),
        },
        "purchase": {
            "to": market.contract.address,
            "data": market.contract.encode_abi(
                "purchase", args=[model_id, body.calls, listing.price_per_call]
            ),
        },
    }
    if body.buyer and body.deadline:
        result["permit"] = market.permit_typed_data(body.buyer, total, body.deadline, listing.token)
    return json_response(result)


@blueprint.post("/receipts")
@spec.validate(
    json=ReceiptBody,
    resp=Responses(HTTP_400=ErrorBody, HTTP_403=ErrorBody, HTTP_409=ErrorBody),
    tags=["payments"],
    skip_validation=True,
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
@spec.validate(resp=Responses(HTTP_401=ErrorBody), tags=["payments"])
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
def openapi() -> Response:
    """This API's OpenAPI document (generated)."""
    return json_response(spec.spec)
