"""The one place an error becomes an HTTP answer: domain, storage and inference errors
through `errors.describe`, Werkzeug's own (404, 405, 413) by their name, in the
marketplace's shape on /api/v1, the Open Inference Protocol's on /v2, and as a page
for a storefront page. Unexpected errors are logged, never leaked. `error_answer` is
Flask-free: the paid route answers with it outside Flask (`web.paid_route`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from flask import Response, render_template, request
from werkzeug.exceptions import HTTPException

from marketplace import errors
from marketplace.payments.x402 import headers as x402

log = logging.getLogger("modelmarket")


def error_answer(
    exc: Exception, path: str, url: Callable[[], str]
) -> tuple[int, dict[str, object], dict[str, str]]:
    """(status, JSON body, headers) for `exc` raised by a request for `path`; `url`
    gives the request's URL (a 402 on /v2 names it as the resource paid for)."""
    headers: dict[str, str] = {}
    body: dict[str, object]
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        body = {
            "error": exc.name.lower().replace(" ", "_"),
            "message": exc.description or exc.name,
        }
        # keep what the protocol says must travel with it (Allow on a 405)
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    else:
        status, body = errors.describe(exc)
        if status == 500 and body["error"] == "internal_error":
            log.exception("unexpected error")
        if isinstance(exc, errors.PaidCallFailed):
            headers = dict(exc.headers)  # what the payment gave back, and the inference id
            cause = exc.cause
        else:
            cause = exc
        if isinstance(cause, errors.ModelMarketError):
            headers.update(cause.headers)
        if isinstance(cause, errors.PaymentRequired) and path.startswith("/v2/"):
            headers[x402.PAYMENT_REQUIRED] = x402.payment_required_header(
                url(), cause.message, cause.accepts
            )
    wait = errors.retry_after(status, str(body["error"]))
    if wait is not None:
        headers.setdefault("Retry-After", str(wait))
    if path.startswith("/v2/"):
        body = errors.oip_body(body)
    return status, body, headers


def error_response(exc: Exception) -> Response:
    """The answer for `exc`, raised anywhere in a Flask request."""
    status, body, headers = error_answer(exc, request.path, lambda: request.url)
    if request.blueprint == "store" and request.method == "GET":
        # a page asked for by a browser gets a page, with the same code and message
        page = render_template("error.html", status=status, error=body)
        return Response(page, status=status, mimetype="text/html", headers=headers)
    return Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)
