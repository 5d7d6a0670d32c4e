"""The Flask application factory: `flask --app app run`, `gunicorn 'app:create_app()'`."""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from marketplace import api, errors, oip
from marketplace.config import Settings
from marketplace.openapi import spec
from marketplace.payments import PrepaidCredits
from marketplace.services import Gateway

log = logging.getLogger("modelmarket")


def __getattr__(name: str) -> object:
    """`gunicorn app:app`: the app is built on first access (in each worker), never at
    import."""
    if name == "app":
        return create_app()
    raise AttributeError(name)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; nothing is created at import time."""
    app = Flask(__name__)
    gateway = Gateway(settings or Settings())
    gateway.payments = PrepaidCredits(
        gateway.engine,
        api.accepts,
        lease_size=gateway.settings.credit_lease_size,
        ttl=gateway.settings.credit_lease_ttl,
    )
    app.extensions["modelmarket"] = gateway

    @app.before_request
    def bound_the_body() -> None:
        # Bounded before anything reads the body: Werkzeug answers 413 past this, whether
        # the length is declared or the body streams in chunks.
        settings = gateway.settings
        request.max_content_length = (
            settings.max_infer_body_bytes
            if request.path.startswith("/v2/")
            else settings.max_api_body_bytes
        )

    @app.after_request
    def no_sniffing(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.errorhandler(Exception)
    def any_error(exc: Exception) -> Response:
        # The one place an error becomes HTTP; unexpected ones are logged, never leaked.
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
        if request.path.startswith("/v2/"):
            body = errors.oip_body(body)
        response = Response(
            orjson.dumps(body), status=status, mimetype="application/json", headers=headers
        )
        left = getattr(exc, "credits_remaining", None)
        if left is not None:
            response.headers["X-Credits-Remaining"] = str(left)
            response.headers["X-Inference-Id"] = str(exc.inference_id)  # type: ignore[attr-defined]
        return response

    app.register_blueprint(api.blueprint)
    app.register_blueprint(oip.blueprint)
    spec.register(app)
    return app
