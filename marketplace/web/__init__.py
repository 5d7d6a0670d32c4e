"""The web faces: the storefront (HTML), the marketplace API (/api/v1), the Open
Inference Protocol (/v2) and the OpenAPI document, registered on one Flask app with the
request bounds, the browser session, the headers every answer carries, and the one
error handler; the paid route (`paid_route`) answers in front of Flask, with the same."""

from __future__ import annotations

from flask import Flask, Response, request

from marketplace.web import api, audit, metrics, oip, storefront
from marketplace.web import headers as answer_headers
from marketplace.web import session as web_session
from marketplace.web.errors import error_response
from marketplace.web.gateway import Gateway
from marketplace.web.openapi import spec
from marketplace.web.paid_route import PaidRoute


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
        gateway.start_background()

    @app.after_request
    def every_answer(response: Response) -> Response:
        response.headers.update(answer_headers.for_path(request.path))
        return response

    web_session.configure(app, gateway.secret, tls=settings.public.startswith("https://"))
    app.register_error_handler(Exception, error_response)
    app.register_blueprint(storefront.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(audit.blueprint)
    app.register_blueprint(oip.blueprint)
    app.register_blueprint(metrics.blueprint)
    spec.register(app)
    app.wsgi_app = PaidRoute(app.wsgi_app, gateway)  # type: ignore[method-assign]
