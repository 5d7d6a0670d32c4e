"""The Flask application factory: `flask --app app run`, `gunicorn 'app:create_app()'`."""

from __future__ import annotations

from flask import Flask

from marketplace import logs, web
from marketplace.config import Settings, load_settings
from marketplace.web.gateway import Gateway


def __getattr__(name: str) -> object:
    """`gunicorn app:app`: the app is built on first access (in each worker), never at
    import."""
    if name == "app":
        return create_app()
    raise AttributeError(name)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; nothing is created at import time."""
    settings = settings or load_settings()
    logs.configure(settings)
    app = Flask(__name__, static_folder=None)  # the storefront serves its own static files
    web.register(app, Gateway(settings))
    return app
