"""The web storefront: server-rendered pages (Jinja, autoescaped: every name, card and
tag came from the chain or IPFS) that read well without JavaScript, and the browser
session's sign-in. The wallet parts (buy, sign in, keys, seller actions) are plain
scripts under static/; they call /api/v1 with the session cookie."""

from __future__ import annotations

import math
from typing import Any, cast
from urllib.parse import urlencode

from eth_utils.address import to_checksum_address
from flask import Blueprint, Response, redirect, render_template, request, url_for
from pydantic import BaseModel, Field
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from marketplace import errors
from marketplace.accounts import keys as api_keys
from marketplace.accounts import siwe
from marketplace.catalog.listings import versions
from marketplace.catalog.sales import sales, served_counts
from marketplace.catalog.search import Query, Sort, by_seller, popular_tags, search
from marketplace.catalog.units import format_units
from marketplace.chain.transactions import calldata
from marketplace.db.tables import ApiKey, Credit, Listing
from marketplace.web import session as web_session
from marketplace.web.gateway import Gateway
from marketplace.web.requests import MODEL_ID, current_gateway, json_response, parse, validated
from marketplace.web.schemas import ModelQuery, VerifyBody

blueprint = Blueprint(
    "store",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
PER_PAGE = 12


class MessageBody(BaseModel):
    address: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")


@blueprint.app_context_processor
def page_globals() -> dict[str, Any]:
    """What every page's frame shows: who is signed in, the CSRF token."""
    return {
        "signed_in": web_session.signed_in_address(),
        "csrf_token": web_session.csrf_token,
    }


# ------------------------------------------------------------------ money


class Money:
    """Token amounts for one page: decimals and symbol read once per token; if the chain
    does not answer, amounts show in the token's smallest unit and say so."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._known: dict[str, tuple[int, str] | None] = {}

    def unit(self, token: str) -> tuple[int, str] | None:
        if token not in self._known:
            try:
                market = self.gateway.market
                self._known[token] = (market.token_decimals(token), market.token_symbol(token))
            except (errors.ChainError, errors.ConfigurationError):
                self._known[token] = None
        return self._known[token]

    def __call__(self, amount: int, token: str) -> str:
        unit = self.unit(token)
        if unit is None:
            return f"{amount} units"
        return f"{format_units(amount, unit[0])} {unit[1]}"


# ------------------------------------------------------------------ pages


@blueprint.get("/")
def catalog() -> str:
    """Offered models: search, tag filter, price sort, pages."""
    q = validated(ModelQuery, {**request.args.to_dict(), "per_page": PER_PAGE})
    gateway = current_gateway()
    query = Query(text=q.q, tag=q.tag, sort=cast(Sort, q.sort), page=q.page, per_page=PER_PAGE)
    with gateway.reads() as s:
        found = search(s, query)
        served = served_counts(s, [x.model_id for x in found.listings])
        tags = popular_tags(s)
    pages = max(1, math.ceil(found.total / PER_PAGE))

    def page_url(page: int) -> str:
        args = {k: v for k, v in (("q", q.q), ("tag", q.tag), ("sort", q.sort)) if v}
        return url_for("store.catalog") + "?" + urlencode({**args, "page": page})

    return render_template(
        "catalog.html",
        listings=found.listings,
        served=served,
        total=found.total,
        q=q,
        tags=tags,
        page=q.page,
        pages=pages,
        page_url=page_url,
        money=Money(gateway),
    )


@blueprint.get(f"/models/{MODEL_ID}")
def model(model_id: int) -> str:
    """One model: its card, signature, price, CID, versions, seller, how to call it, and
    the buy panel."""
    gateway = current_gateway()
    listing = gateway.listing(model_id, max_age=0)
    if listing is None:
        raise errors.NotFound(f"there is no model {model_id}")
    with gateway.reads() as s:
        full = s.get(Listing, model_id)
        assert full is not None
        every = versions(s, full)
        served = served_counts(s, [model_id]).get(model_id, 0)
    money = Money(gateway)
    unit = money.unit(full.token)
    signature = full.signature or {}
    example = _example_inputs(signature)
    return render_template(
        "model.html",
        listing=full,
        versions=every,
        served=served,
        money=money,
        unit=unit,
        inputs=signature.get("inputs", []),
        outputs=signature.get("outputs", []),
        example=example,
        public=gateway.settings.public,
        deployment=_deployment(gateway),
        confirmations=gateway.settings.confirmations,
    )


@blueprint.get("/account")
def account() -> str:
    """Sign in; then my keys and my credits."""
    address = web_session.signed_in_address()
    keys: list[ApiKey] = []
    credits: list[tuple[Credit, int, str | None]] = []
    gateway = current_gateway()
    if address is not None:
        address = address.lower()  # as the ledger keeps it
        with gateway.reads() as s:
            keys = api_keys.list_keys(s, address)
            left = gateway.prepaid.calls_left(s, address)
            rows = s.scalars(select(Credit).where(Credit.buyer == address)).all()
            names = {
                m: n
                for m, n in s.execute(
                    select(Listing.model_id, Listing.name).where(
                        Listing.model_id.in_([c.model_id for c in rows])
                    )
                )
            }
            credits = [(c, left[c.model_id], names.get(c.model_id)) for c in rows]
    return render_template(
        "account.html",
        address=address,
        keys=keys,
        credits=credits,
        deployment=_deployment(gateway),
    )


@blueprint.get("/dashboard")
def dashboard() -> BaseResponse:
    """The signed-in seller's dashboard (or the sign-in)."""
    address = web_session.signed_in_address()
    if address is None:
        return redirect(url_for("store.account", next="dashboard"))
    return redirect(url_for("store.seller", address=address))


@blueprint.get("/sellers/<address>")
def seller(address: str) -> str:
    """A seller's listings, calls sold and served, earnings over time; its own seller
    also gets withdraw, set price, delist and relist."""
    try:
        who = to_checksum_address(address)
    except ValueError:
        raise errors.NotFound(f"{address!r} is not an address") from None
    gateway = current_gateway()
    token = gateway.deployment.token
    with gateway.reads() as s:
        rows = by_seller(s, who)
        history = sales(s, who, token)
    money = Money(gateway)
    try:
        owed: int | None = gateway.market.earnings(who)
    except errors.ChainError:
        owed = None
    own = (web_session.signed_in_address() or "").lower() == who.lower()
    return render_template(
        "seller.html",
        seller=who,
        rows=rows,
        owed=owed,
        money=money,
        token=token,
        chart=_chart(history.earnings, money.unit(token)),
        served_chart=_bars(history.served),
        own=own,
        deployment=_deployment(gateway),
        selectors=_seller_selectors(),
        unit=money.unit(token),
    )


# ---------------------------------------------------------- browser session


@blueprint.post("/session/message")
def session_message() -> Response:
    """The Sign-In with Ethereum message for `address` to sign (built here: the page has
    no keccak for the EIP-55 address the message must carry)."""
    web_session.require_csrf()
    body = parse(MessageBody)
    gateway = current_gateway()
    message = siwe.message_for(
        to_checksum_address(body.address), gateway.siwe_terms, siwe.issue_nonce(gateway.secret)
    )
    return json_response({"message": message})


@blueprint.post("/session")
def session_begin() -> Response:
    """Check the signed message; the session now holds a new API key for this browser."""
    web_session.require_csrf()
    body = parse(VerifyBody)
    gateway = current_gateway()
    with gateway.sessions() as s, s.begin():
        address = siwe.verify_siwe(
            s, body.message, body.signature, terms=gateway.siwe_terms, secret=gateway.secret
        )
        _key, text = api_keys.create_key(s, address, "storefront")
    web_session.begin(address, text)
    return json_response({"address": address, "csrf_token": web_session.csrf_token()}, 201)


@blueprint.post("/session/end")
def session_end() -> Response:
    """Sign out: the session's key is revoked and the cookie forgotten."""
    web_session.require_csrf()
    held = web_session.end()
    if held is not None:
        gateway = current_gateway()
        try:
            key = gateway.keys.authenticate(held)
        except errors.Unauthenticated:
            key = None
        if key is not None:
            with gateway.sessions() as s, s.begin():
                api_keys.revoke_key(s, key.address, key.id)
            gateway.keys.forget(key.id)
    return json_response({"signed_out": True})


# ------------------------------------------------------------------ helpers


def _deployment(gateway: Gateway) -> dict[str, Any] | None:
    try:
        d = gateway.deployment
    except errors.ConfigurationError:
        return None
    return {"chain_id": d.chain_id, "marketplace": d.marketplace, "token": d.token}


def _example_inputs(signature: dict[str, Any]) -> list[dict[str, Any]]:
    """One OIP v2 input per model input, zeros of the declared shape (dynamic dims 1)."""
    out = []
    for spec in signature.get("inputs", [])[:8]:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.get("shape", [])]
        count = math.prod(shape) if shape else 1
        if count > 64:  # an example, not a payload
            continue
        zero: Any = False if spec.get("datatype") == "BOOL" else 0
        out.append(
            {
                "name": spec.get("name", ""),
                "datatype": spec.get("datatype", "FP32"),
                "shape": shape,
                "data": [zero] * count,
            }
        )
    return out


def _chart(points: list[tuple[int, int]], unit: tuple[int, str] | None) -> dict[str, Any]:
    """Cumulative earnings by block as an SVG step line in a 600x200 box: flat at 0
    before the first sale, a step up at each block with sales, flat to the right edge."""
    if not points:
        return {"points": "", "empty": True}
    width, height, pad = 600, 200, 10
    first, last = points[0][0], points[-1][0]
    top = max(v for _, v in points) or 1
    # one sale still gets a visible step: the first block sits a little right of the axis
    span = max(last - first, 1)
    left = pad + (width - 2 * pad) * 0.05

    def x(block: int) -> float:
        return left + (block - first) / span * (width - pad - left) * 0.9

    def y(value: int) -> float:
        return height - pad - value / top * (height - 2 * pad)

    coords, level = [f"{pad},{y(0):.1f}"], y(0)
    for block, value in points:
        coords.append(f"{x(block):.1f},{level:.1f}")
        level = y(value)
        coords.append(f"{x(block):.1f},{level:.1f}")
    coords.append(f"{width - pad},{level:.1f}")
    shown = format_units(top, unit[0]) + " " + unit[1] if unit else f"{top} units"
    return {
        "points": " ".join(coords),
        "empty": False,
        "first": first,
        "last": last,
        "top": shown,
        "table": [(b, format_units(v, unit[0]) if unit else str(v)) for b, v in points[-20:]],
    }


def _bars(days: list[tuple[Any, int]]) -> dict[str, Any]:
    """Calls served per day as SVG bars in a 600x120 box (the newest 60 days; a bar is
    at most 40 wide, so a few days do not fill the box)."""
    days = days[-60:]
    if not days:
        return {"bars": [], "empty": True}
    width, height = 600, 120
    top = max(n for _, n in days) or 1
    step = min(width / len(days), 44)
    bars = [
        {
            "x": round(i * step + 4, 1),
            "w": round(max(step - 4, 1), 1),
            "h": round(n / top * (height - 10), 1),
            "y": round(height - n / top * (height - 10), 1),
            "label": f"{day.isoformat()}: {n} calls",
        }
        for i, (day, n) in enumerate(days)
    ]
    return {"bars": bars, "empty": False, "top": top, "table": days[-20:]}


def _seller_selectors() -> dict[str, str]:
    """The 4-byte selectors the dashboard's script puts before its arguments."""
    return {
        "withdraw": calldata("withdraw(address)", "0x" + "00" * 20)[:10],
        "setPrice": calldata("setPrice(uint256,uint256)", 0, 0)[:10],
        "delist": calldata("delist(uint256)", 0)[:10],
        "relist": calldata("relist(uint256)", 0)[:10],
    }
