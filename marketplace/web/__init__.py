"""The web faces: the storefront (HTML), the marketplace API (/api/v1), the Open
Inference Protocol (/v2) and the OpenAPI document, registered on one Flask app with the
request bounds, the browser session, the headers every answer carries, and the one
error handler."""

from __future__ import annotations

from flask import Flask, Response, request

from marketplace.payments.x402 import headers as x402
from marketplace.web import api, audit, metrics, oip, storefront
from marketplace.web import session as web_session
from marketplace.web.errors import error_response
from marketplace.web.gateway import Gateway
from marketplace.web.openapi import spec

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def register(app: Flask, gateway: Gateway) -> None:
    """Serve `gateway` from `app`."""
    app.extensions["modelmarket"] = gateway
    settings = gateway.settings

    @app.before_request
    def bound_the_body() -> None:
        # Bounded before anything reads the body: Werkzeug answers 413 past this, whether
        # the length is declared or the body streams in chunks.
        request.max_content_length = (
            settings.max_infer_body_bytes
            if request.path.startswith("/v2/")
            else settings.max_api_body_bytes
        )
        if settings.settler_key is not None:
            # each worker's x402 reconciler (a pid check once running): a restarted
            # gateway finishes what a crash or a timeout left, with or without traffic
            gateway.x402.start()
        if gateway.receipts_on:
            # each worker's anchorer: a restarted gateway anchors what it served before
            gateway.anchorer.start()

    @app.after_request
    def no_sniffing(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Scripts and styles only from our own files: text from the chain or IPFS that
        # escaped escaping still could not run. Pages cannot be framed.
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        if request.path.startswith("/v2/"):
            # a browser's script paying with x402 must be able to read these
            response.headers["Access-Control-Expose-Headers"] = x402.EXPOSED
        return response

    web_session.configure(app, gateway.secret, tls=settings.public.startswith("https://"))
    app.register_error_handler(Exception, error_response)
    app.register_blueprint(storefront.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(audit.blueprint)
    app.register_blueprint(oip.blueprint)
    app.register_blueprint(metrics.blueprint)
    spec.register(app)
