"""The storefront's browser session: after Sign-In with Ethereum in the page, a signed
cookie (HttpOnly, SameSite=Lax, Secure behind TLS) holds the API key the sign-in made,
so the page's own requests are authenticated without the key ever reaching JavaScript.
Any change made with that cookie must carry this session's CSRF token (Flask-WTF)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from flask import Flask, Request, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf

from marketplace import errors

csrf = CSRFProtect()
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LIFETIME = timedelta(days=7)


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without the signing serializer Flask builds on
    every request that carries no session cookie: every API-key and paid /v2 call, where
    it was ~50 us of a paid call's CPU (bench.profile). The answer is the same: an empty
    session."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)


def configure(app: Flask, secret: bytes, *, tls: bool) -> None:
    """Sign the cookie with a key derived from the gateway's secret; check CSRF where a
    cookie authenticates (`require_csrf`), not on every POST: API callers send a bearer
    key, which a third-party page cannot."""
    app.secret_key = hmac.new(secret, b"storefront-session", hashlib.sha256).digest()
    app.config.update(
        # __Host-: only this exact host over TLS may set it (no cookie tossing from a
        # sibling subdomain); the prefix requires Secure, so plain http keeps the name
        SESSION_COOKIE_NAME="__Host-mm_session" if tls else "mm_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=tls,
        PERMANENT_SESSION_LIFETIME=LIFETIME,
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=None,  # as long as the session
        WTF_CSRF_HEADERS=["X-CSRF-Token"],
    )
    app.session_interface = CookieSessions()
    csrf.init_app(app)


def csrf_token() -> str:
    """This session's CSRF token (for the page's <meta> tag)."""
    return str(generate_csrf())


def require_csrf() -> None:
    """CsrfRejected unless the request carries this session's token."""
    if request.method in SAFE_METHODS:
        return
    try:
        csrf.protect()
    except CSRFError as exc:
        raise errors.CsrfRejected(f"refused: {exc.description}") from None


def held_key() -> str | None:
    """The API key this browser signed in with, if any (a cookie-authenticated change
    must pass `require_csrf` first)."""
    value = session.get("api_key")
    return value if isinstance(value, str) else None


def signed_in_address() -> str | None:
    """Who this browser signed in as, if anyone."""
    value = session.get("address")
    return value if isinstance(value, str) else None


def begin(address: str, api_key: str) -> None:
    """Remember a sign-in."""
    session.clear()
    session.permanent = True
    session["address"] = address
    session["api_key"] = api_key


def end() -> str | None:
    """Forget the sign-in; the API key it held (for the caller to revoke)."""
    key = held_key()
    session.clear()
    return key
