"""The storefront's browser session over HTTP: a SIWE sign-in keeps an API key in an
HttpOnly, SameSite cookie; every change made with that cookie needs the session's CSRF
token (a page elsewhere cannot get it); bearer-key callers are unaffected; signing out
revokes the key. Escaping and the CSP are checked in a real browser (tests/browser)."""

from __future__ import annotations

import re

from eth_account import Account
from eth_account.messages import encode_defunct

from marketplace.config import Settings
from tests.support.world import World, buy, sign_in


def _csrf(world: World, path: str = "/account") -> str:
    page = world.client.get(path).get_data(as_text=True)  # type: ignore[attr-defined]
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found, "every page carries its CSRF token"
    return found.group(1)


def _browser_sign_in(world: World, who: int) -> str:
    client = world.client
    token = _csrf(world)
    address = world.signers[who].address
    made = client.post(  # type: ignore[attr-defined]
        "/session/message", json={"address": address}, headers={"X-CSRF-Token": token}
    )
    assert made.status_code == 200, made.get_json()
    message = made.get_json()["message"]
    assert address in message and "Sign in to ModelMarket" in message
    signed = Account.sign_message(encode_defunct(text=message), world.keys[who])
    done = client.post(  # type: ignore[attr-defined]
        "/session",
        json={"message": message, "signature": "0x" + signed.signature.hex().removeprefix("0x")},
        headers={"X-CSRF-Token": token},
    )
    assert done.status_code == 201, done.get_json()
    cookie = done.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http on loopback; https sets it (below)
    return str(done.get_json()["csrf_token"])


def test_cookie_changes_need_the_csrf_token_and_bearer_callers_do_not(world: World):
    client = world.client
    token = _browser_sign_in(world, 2)
    # reads with the cookie alone
    keys = client.get("/api/v1/keys")  # type: ignore[attr-defined]
    assert keys.status_code == 200 and [k["name"] for k in keys.get_json()] == ["storefront"]
    # a change without the token (a forged cross-site post) is refused and does nothing
    forged = client.post("/api/v1/keys", json={"name": "forged"})  # type: ignore[attr-defined]
    assert forged.status_code == 403
    assert forged.get_json()["error"] == "csrf_rejected"
    wrong = client.post(  # type: ignore[attr-defined]
        "/api/v1/keys", json={"name": "forged"}, headers={"X-CSRF-Token": token + "x"}
    )
    assert wrong.status_code == 403
    assert len(client.get("/api/v1/keys").get_json()) == 1  # type: ignore[attr-defined]
    session_key = client.get("/api/v1/keys").get_json()[0]["key_id"]  # type: ignore[attr-defined]
    forged_revoke = client.delete(f"/api/v1/keys/{session_key}")  # type: ignore[attr-defined]
    assert forged_revoke.status_code == 403
    assert client.get("/api/v1/keys").get_json()[0]["revoked"] is False  # type: ignore[attr-defined]
    tx = buy(world, 2, 3)
    forged_redeem = client.post("/api/v1/receipts", json={"tx_hash": tx})  # type: ignore[attr-defined]
    assert forged_redeem.status_code == 403
    # with the token, the same changes work
    made = client.post(  # type: ignore[attr-defined]
        "/api/v1/keys", json={"name": "app"}, headers={"X-CSRF-Token": token}
    )
    assert made.status_code == 201 and made.get_json()["api_key"].startswith("mm_")
    redeemed = client.post(  # type: ignore[attr-defined]
        "/api/v1/receipts", json={"tx_hash": tx}, headers={"X-CSRF-Token": token}
    )
    assert redeemed.status_code == 201, redeemed.get_json()
    # a bearer key needs no CSRF token, cookie or not
    key = sign_in(world, 3)
    bearer = client.post(  # type: ignore[attr-defined]
        "/api/v1/keys", json={"name": "ci"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert bearer.status_code == 201
    assert bearer.get_json()["address"].lower() == world.signers[3].address.lower()


def test_the_sign_in_itself_needs_the_token(world: World):
    refused = world.client.post(  # type: ignore[attr-defined]
        "/session/message", json={"address": world.signers[2].address}
    )
    assert refused.status_code == 403 and refused.get_json()["error"] == "csrf_rejected"


def test_signing_out_revokes_the_session_key(world: World):
    client = world.client
    token = _browser_sign_in(world, 2)
    assert client.get("/api/v1/credits").status_code == 200  # type: ignore[attr-defined]
    out = client.post("/session/end", headers={"X-CSRF-Token": token})  # type: ignore[attr-defined]
    assert out.status_code == 200
    after = client.get("/api/v1/credits")  # type: ignore[attr-defined]
    assert after.status_code == 401
    key = sign_in(world, 2)
    listed = client.get(  # type: ignore[attr-defined]
        "/api/v1/keys", headers={"Authorization": f"Bearer {key}"}
    ).get_json()
    assert {k["name"]: k["revoked"] for k in listed}["storefront"] is True


def test_behind_tls_the_cookie_is_secure(world: World, tmp_path):  # type: ignore[no-untyped-def]
    from app import create_app

    settings = world.settings.model_copy(update={"public_url": "https://market.example"})
    assert isinstance(settings, Settings)
    app = create_app(settings)
    try:
        assert app.config["SESSION_COOKIE_SECURE"] is True
        page = app.test_client().get("/", base_url="https://market.example")
        assert page.status_code == 200
        assert "Secure" in page.headers["Set-Cookie"]
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    finally:
        app.extensions["modelmarket"].prepaid.close()


def test_the_session_key_expires_with_the_session(world: World):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from marketplace.db.engine import make_engine, session_factory
    from marketplace.db.tables import ApiKey

    client = world.client
    _browser_sign_in(world, 2)
    (key,) = client.get("/api/v1/keys").get_json()  # type: ignore[attr-defined]
    with session_factory(make_engine(world.settings.db_url))() as s, s.begin():
        row = s.get(ApiKey, key["key_id"])
        assert row is not None and row.expires_at is not None
        expires = row.expires_at.replace(tzinfo=row.expires_at.tzinfo or UTC)
        assert timedelta(days=6.9) < expires - datetime.now(UTC) <= timedelta(days=7)
        # a week later (the cookie leaked, say): the key no longer works
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == key["key_id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    app = client.application  # type: ignore[attr-defined]
    app.extensions["modelmarket"].keys.forget(key["key_id"])  # its 2 s cache
    refused = client.get("/api/v1/credits")  # type: ignore[attr-defined]
    assert refused.status_code == 401
    assert "expired" in refused.get_json()["message"]
    # and the pages treat the browser as signed out
    assert b"Sign in with Ethereum" in client.get("/account").data  # type: ignore[attr-defined]
