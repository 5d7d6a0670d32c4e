"""The Flask application factory: `flask --app app run`, `gunicorn 'app:create_app()'`."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

from marketplace import api, errors
from marketplace.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; nothing is created at import time."""
    app = Flask(__name__)
    app.config["SETTINGS"] = settings or Settings()

    @app.errorhandler(errors.ModelMarketError)
    def domain_error(exc: errors.ModelMarketError) -> tuple[Any, int]:
        # The one place a domain error becomes HTTP.
        return jsonify(exc.to_dict()), exc.http_status

    app.register_blueprint(api.blueprint)
    return app
