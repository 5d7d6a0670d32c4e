"""The one place an error becomes an HTTP answer: domain, storage and inference errors
through `errors.describe`, Werkzeug's own (404, 405, 413) by their name, in the
marketplace's shape on /api/v1 and the Open Inference Protocol's on /v2. Unexpected
errors are logged, never leaked."""

from __future__ import annotations

import logging

import orjson
from flask import Response, request
from werkzeug.exceptions import HTTPException

from marketplace import errors

log = logging.getLogger("modelmarket")


def error_response(exc: Exception) -> Response:
    """The answer for `exc`, raised anywhere in a request."""
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
            headers = exc.headers  # what the payment gave back, and the inference id
    if request.path.startswith("/v2/"):
        body = errors.oip_body(body)
    return Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)
