"""What every route does with a request: find the app's Gateway, parse and validate a
body or query into a schema (one mapping of validation errors), authenticate the key,
look up a listing, and answer JSON."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from flask import Response, current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from marketplace import errors
from marketplace.accounts.keys import bearer_token
from marketplace.catalog.listings import listed, offered
from marketplace.db.tables import ApiKey, Listing
from marketplace.web.gateway import Gateway
from marketplace.web.session import held_key, require_csrf

# A model id in a route: the database keeps it in 64 signed bits, so a larger one is no
# listing (404 from the router) rather than an overflow in the query.
MODEL_ID = f"<int(max={2**63 - 1}):model_id>"
M = TypeVar("M", bound=BaseModel)


def current_gateway() -> Gateway:
    """The app's Gateway (built once by create_app)."""
    gateway: Gateway = current_app.extensions["modelmarket"]
    return gateway


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON via orjson (uint256 amounts are sent as strings by the callers)."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)


def validated(model: type[M], data: Any) -> M:
    """`data` as `model`; BadRequest naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise errors.BadRequest(f"{where}: {first['msg']}") from None


def parse(model: type[M]) -> M:
    """The request's JSON body as `model`."""
    try:
        data = request.get_json(force=True, silent=False) or {}
    except RequestEntityTooLarge:
        raise
    except Exception:
        raise errors.BadRequest("the body must be JSON") from None
    return validated(model, data)


def require_key(gateway: Gateway | None = None) -> ApiKey:
    """The caller's live API key (401 otherwise): a bearer key, or the key a storefront
    sign-in keeps in the session cookie (a change made with it needs the CSRF token)."""
    gateway = gateway or current_gateway()
    header = request.headers.get("Authorization")
    if header is None and (held := held_key()) is not None:
        require_csrf()
        return gateway.keys.authenticate(held)
    return gateway.keys.authenticate(bearer_token(header))


def the_listing(model_id: int, gateway: Gateway | None = None) -> Listing:
    """A listed model (404 otherwise), whatever its model's status."""
    return listed((gateway or current_gateway()).listing(model_id), model_id)


def offered_listing(model_id: int, gateway: Gateway | None = None) -> Listing:
    """A listed model whose model passed the indexer's checks; otherwise why not."""
    return offered((gateway or current_gateway()).listing(model_id), model_id)
