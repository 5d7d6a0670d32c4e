"""Sign-in abuse: bodies and messages bounded before any parsing, the SIWE domain and URI
from configuration (never the request's Host), nonces that cost nothing to ask for and
work once."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

from eth_account import Account
from eth_account.messages import encode_defunct
from sqlalchemy import func, select

from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import Nonce
from tests.support.world import World

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import siwe


def _signed(
    world: World, *, domain: str, uri: str, statement: str = "Sign in", nonce=None, resources=None
):  # type: ignore[no-untyped-def]
    nonce = nonce or world.client.post("/api/v1/auth/nonce").get_json()["nonce"]
    message = siwe.SiweMessage(
        domain=domain,
        address=world.signers[2].address,
        statement=statement,
        uri=uri,
        version="1",
        chain_id=31337,
        nonce=nonce,
        issued_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        resources=resources,
    ).prepare_message()
    signature = Account.sign_message(encode_defunct(text=message), world.keys[2]).signature
    return {"message": message, "signature": "0x" + signature.hex().removeprefix("0x")}


def _ours(world: World) -> tuple[str, str]:
    public = world.settings.public
    return public.split("://", 1)[1], public


def test_oversized_bodies_and_messages_are_refused_before_parsing(world):
    domain, uri = _ours(world)
    good = _signed(world, domain=domain, uri=uri)
    # 1 MB: over the /api/v1 body bound, refused by the server before the JSON is read
    huge = {**good, "message": good["message"] + "a" * (1 << 20)}
    r = world.client.post("/api/v1/auth/verify", json=huge)
    assert r.status_code == 413 and r.get_json()["error"] == "request_entity_too_large"
    # 20 KB: inside the body bound, over the message bound: refused before SIWE parsing
    long = _signed(world, domain=domain, uri=uri, statement="a" * 20_000)
    r = world.client.post("/api/v1/auth/verify", json=long)
    assert r.status_code == 400 and "message" in r.get_json()["message"]
    # a long statement that fits (the ABNF parser took ~0.1 s on this) is still accepted
    fits = _signed(world, domain=domain, uri=uri, statement="b" * 1000)
    assert world.client.post("/api/v1/auth/verify", json=fits).status_code == 201
    # a malformed signature never reaches the recovery code
    bad = {**good, "signature": "0x" + "zz" * 65}
    assert world.client.post("/api/v1/auth/verify", json=bad).status_code == 400


def test_the_domain_comes_from_configuration_not_the_host_header(world):
    domain, uri = _ours(world)
    evil = _signed(world, domain="evil.example", uri="https://evil.example")
    r = world.client.post("/api/v1/auth/verify", json=evil, headers={"Host": "evil.example"})
    assert r.status_code == 401 and r.get_json()["error"] == "siwe_rejected"
    assert "evil.example" in r.get_json()["message"]
    # our domain but another origin in the URI: refused too
    other_uri = _signed(world, domain=domain, uri="https://evil.example/login")
    r = world.client.post("/api/v1/auth/verify", json=other_uri)
    assert r.status_code == 401 and "URI" in r.get_json()["message"]
    # the configured domain works whatever Host the request came with (a proxy's)
    ours = _signed(world, domain=domain, uri=uri)
    r = world.client.post("/api/v1/auth/verify", json=ours, headers={"Host": "internal:9"})
    assert r.status_code == 201, r.get_json()


def test_nonces_cost_nothing_to_ask_for_and_work_once(world):
    domain, uri = _ours(world)
    for _ in range(500):  # a flood of nonce requests writes nothing
        assert world.client.post("/api/v1/auth/nonce").status_code == 200
    count = select(func.count()).select_from(Nonce)
    sessions = session_factory(make_engine(world.settings.db_url))
    with sessions() as s:
        assert s.execute(count).scalar_one() == 0
    once = _signed(world, domain=domain, uri=uri)
    assert world.client.post("/api/v1/auth/verify", json=once).status_code == 201
    r = world.client.post("/api/v1/auth/verify", json=once)
    assert r.status_code == 401 and "already used" in r.get_json()["message"]
    # a nonce this gateway never issued (right shape, wrong MAC)
    forged = _signed(world, domain=domain, uri=uri, nonce="f" * 48)
    r = world.client.post("/api/v1/auth/verify", json=forged)
    assert r.status_code == 401 and "not issued" in r.get_json()["message"]
    with sessions() as s:
        assert s.execute(count).scalar_one() == 1  # only the nonce that was used


def test_messages_the_parser_would_backtrack_on_are_refused_up_front(world):
    # `"\n- a:" * k` + " " made the EIP-4361 regular expression backtrack exponentially
    # (k=16: 2 s, x2.2 per line; k=30 would run for hours): refused before it parses
    domain, uri = _ours(world)
    good = _signed(world, domain=domain, uri=uri)
    for tail, says in [
        ("\nResources:" + "\n- a:" * 30 + " ", "lines"),
        ("\nResources:" + "\n- a:" * 4 + " ", "resources"),
        ("\nResources:" + "\n- //" * 5, "resources"),
    ]:
        r = world.client.post(
            "/api/v1/auth/verify", json={**good, "message": good["message"] + tail}
        )
        assert r.status_code == 401 and says in r.get_json()["message"]
    wide = good["message"].replace(f"URI: {uri}", "URI: " + "a:" * 600)
    r = world.client.post("/api/v1/auth/verify", json={**good, "message": wide})
    assert r.status_code == 401 and "line" in r.get_json()["message"]
    # a few well-formed resources are fine
    listed = _signed(world, domain=domain, uri=uri, resources=[f"{uri}/a", "ipfs://bafy"])
    assert "Resources:" in listed["message"]
    assert world.client.post("/api/v1/auth/verify", json=listed).status_code == 201
