"""The web storefront: server-rendered pages (Jinja, autoescaped: every name, card and
tag came from the chain or IPFS) that read well without JavaScript, and the browser
session's sign-in. The wallet parts (buy, sign in, keys, seller actions) are plain
scripts under static/; they call /api/v1 with the session cookie."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlencode

import numpy as np
from eth_utils.address import to_checksum_address
from flask import Blueprint, Response, redirect, render_template, request, url_for
from pydantic import BaseModel, Field
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from inference.codecs import NUMPY_TYPES
from marketplace import errors
from marketplace.accounts import keys as api_keys
from marketplace.accounts import siwe
from marketplace.catalog.listings import versions
from marketplace.catalog.sales import earnings
from marketplace.catalog.search import Query, Sort, by_seller, popular_tags, search
from marketplace.catalog.units import format_units
from marketplace.chain.transactions import calldata
from marketplace.db.tables import ApiKey, Credit, Listing
from marketplace.web import session as web_session
from marketplace.web.charts import earnings_chart, served_bars
from marketplace.web.gateway import Gateway
from marketplace.web.requests import MODEL_ID, current_gateway, json_response, parse, validated
from marketplace.web.schemas import ModelQuery, VerifyBody
from storage.cid import normalize
from storage.errors import InvalidCid

blueprint = Blueprint(
    "store",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
PER_PAGE = 12
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


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
                decimals = market.token_decimals(token)
                symbol = market.token_symbol(token)
                self._known[token] = (decimals, symbol) if 0 <= decimals <= 77 else None
            except Exception:
                # (chain down, a bytes32 symbol, bad UTF-8) shows smallest units instead
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
        tags = popular_tags(s)
    served = gateway.served().counts([x.model_id for x in found.listings])
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
    with gateway.reads() as s:
        full = s.get(Listing, model_id)
        if full is None:
            raise errors.NotFound(f"there is no model {model_id}")
        every = versions(s, full)
    served = gateway.served().counts([model_id])[model_id]
    anchored = gateway.anchored().get(model_id, (0, 0))
    money = Money(gateway)
    unit = money.unit(full.token)
    signature = full.signature or {}
    example = _example_inputs(signature)
    return render_template(
        "model.html",
        listing=full,
        versions=every,
        served=served,
        anchored=anchored,
        anchorer=_anchorer(gateway),
        money=money,
        unit=unit,
        inputs=signature.get("inputs", []),
        outputs=signature.get("outputs", []),
        example=example,
        public=gateway.settings.public,
        deployment=_deployment(gateway),
        confirmations=gateway.settings.confirmations,
        # the CIDs go into shell commands to copy: only when they are CIDs
        shell_safe=_is_cid(full.model_cid) and _is_cid(full.metadata_cid),
        # this gateway settles x402 payments for a listing on sale
        per_call=gateway.settings.settler_key is not None and full.active,
    )


def _is_cid(text: str) -> bool:
    try:
        normalize(text)
    except InvalidCid:
        return False
    return text.isalnum()


@blueprint.get("/account")
def account() -> str:
    """Sign in; then my keys and my credits."""
    gateway = current_gateway()
    address = _live_address(gateway)
    keys: list[ApiKey] = []
    credits: list[tuple[Credit, int, str | None]] = []
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
    address = _live_address(current_gateway())
    if address is None:
        return redirect(url_for("store.account", next="dashboard"))
    return redirect(url_for("store.seller", address=address))


@blueprint.get("/sellers/<address>")
def seller(address: str) -> BaseResponse | str:
    """A seller's listings, calls sold, served and anchored on-chain, earnings over time;
    its own seller also gets withdraw, set price, delist and relist."""
    if not ADDRESS.fullmatch(address):
        raise errors.NotFound(f"{address[:64]!r} is not an address")
    who = to_checksum_address(address)
    if address != who:  # one URL per seller
        return redirect(url_for("store.seller", address=who), 301)
    gateway = current_gateway()
    token = gateway.deployment.token
    stats = gateway.served()
    with gateway.reads() as s:
        rows = by_seller(s, who, served=stats)
        points = earnings(s, who, token)
    money = Money(gateway)
    try:
        owed: int | None = gateway.market.earnings(who)
    except errors.ChainError:
        owed = None
    own = (_live_address(gateway) or "").lower() == who.lower()
    return render_template(
        "seller.html",
        seller=who,
        rows=rows,
        anchored=gateway.anchored(),
        owed=owed,
        money=money,
        token=token,
        chart=earnings_chart(points, money.unit(token)),
        served_chart=served_bars(stats.by_day([r.listing.model_id for r in rows])),
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
        # the key lives as long as the cookie that holds it: a leaked cookie is not a
        # bearer key for ever
        _key, text = api_keys.create_key(
            s, address, "storefront", expires_at=datetime.now(UTC) + web_session.LIFETIME
        )
    _revoke_held(gateway)  # the key of an earlier sign-in in this browser
    web_session.begin(address, text)
    return json_response({"address": address, "csrf_token": web_session.csrf_token()}, 201)


@blueprint.post("/session/end")
def session_end() -> Response:
    """Sign out: the session's key is revoked and the cookie forgotten."""
    web_session.require_csrf()
    _revoke_held(current_gateway())  # first: if it fails, the browser stays signed in
    web_session.end()
    return json_response({"signed_out": True})


def _revoke_held(gateway: Gateway) -> None:
    """Revoke the API key this browser's session holds, if it is live."""
    held = web_session.held_key()
    if held is None:
        return
    try:
        key = gateway.keys.authenticate(held)
    except errors.Unauthenticated:
        return
    with gateway.sessions() as s, s.begin():
        api_keys.revoke_key(s, key.address, key.id)
    gateway.keys.forget(key.id)


def _live_address(gateway: Gateway) -> str | None:
    """Who this browser is signed in as, if its key still works (a key revoked from
    another browser, or an old copy of the cookie, signs it out)."""
    held = web_session.held_key()
    if held is None:
        return None
    try:
        key = gateway.keys.authenticate(held)
    except errors.Unauthenticated:
        web_session.end()
        return None
    return key.address


# ------------------------------------------------------------------ helpers


def _deployment(gateway: Gateway) -> dict[str, Any] | None:
    try:
        d = gateway.deployment
    except errors.ConfigurationError:
        return None
    return {"chain_id": d.chain_id, "marketplace": d.marketplace, "token": d.token}


def _anchorer(gateway: Gateway) -> str | None:
    """The address that anchors this gateway's usage receipts (None: it issues none)."""
    try:
        issuing = gateway.receipt_issuer() is not None
    except errors.ConfigurationError:  # no deployment record (yet)
        return None
    return gateway.identity.address if issuing and gateway.identity is not None else None


def _example_inputs(signature: dict[str, Any]) -> list[dict[str, Any]]:
    """One OIP v2 input per model input, zeros of the declared shape (dynamic dims 1)."""
    out = []
    for spec in signature.get("inputs", [])[:8]:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.get("shape", [])]
        count = math.prod(shape) if shape else 1
        if count > 64:  # an example, not a payload
            continue
        zero: Any = False if spec.get("datatype") == "BOOL" else 0
        datatype = spec.get("datatype", "FP32")
        out.append(
            {
                "name": spec.get("name", ""),
                "datatype": datatype,
                "shape": shape,
                "data": [zero] * count,
                # the numpy type the SDK and tritonclient examples build it with
                "numpy": NUMPY_TYPES.get(datatype, np.dtype(np.float32)).type.__name__,
            }
        )
    return out


def _seller_selectors() -> dict[str, str]:
    """The 4-byte selectors the dashboard's script puts before its arguments."""
    return {
        "withdraw": calldata("withdraw(address)", "0x" + "00" * 20)[:10],
        "setPrice": calldata("setPrice(uint256,uint256)", 0, 0)[:10],
        "delist": calldata("delist(uint256)", 0)[:10],
        "relist": calldata("relist(uint256)", 0)[:10],
    }
