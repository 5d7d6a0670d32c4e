"""Nothing one seller lists stops the indexer or gets sold broken, on SQLite and on
PostgreSQL: cards with text the database, a terminal or a page would mishandle (a NUL
card once stopped the PostgreSQL indexer for good), CIDs no database column holds, and
models the validator refuses (they were indexed as fine, found and bought)."""

from __future__ import annotations

import io
import time

import orjson

from marketplace.db.tables import Listing
from marketplace.indexer.follow import follow, health
from storage.local import LocalStore
from tests.fixtures import hostile_models
from tests.integration.test_indexer import CONFIRMATIONS, PRICE, make_indexer, mine


def test_no_card_model_or_event_stops_the_indexer(node, database, tmp_path):
    market, (_, seller, *_) = node
    store = LocalStore(tmp_path / "store")

    def put(data: bytes) -> str:
        return store.add(io.BytesIO(data))

    good_model = put(hostile_models.identity())
    cards = {
        "nul": put(b'{"name": "nul\\u0000name", "tags": ["a"]}'),
        "nul_in_key": put(b'{"name": "k", "signature": {"in\\u0000puts": []}}'),
        "raw_control": put(b'{"name": "bell\x07"}'),
        "bidi": put(orjson.dumps({"name": "safe\u202egnp.exe"})),
        "zero_width": put(orjson.dumps({"name": "ok", "tags": ["ta\u200bg"]})),
        "surrogate": put(b'{"name": "\\ud800"}'),
        "confusable": put(orjson.dumps({"name": "p\u0430ypal"})),  # Cyrillic a
    }
    ids = {k: market.list_model(seller, good_model, v, PRICE)[0] for k, v in cards.items()}
    # CIDs no column holds: a NUL, and 300 characters
    bad_cids = {
        "nul_cid": market.list_model(seller, "bafk\x00evil", put(b'{"name": "a"}'), PRICE)[0],
        "long_cid": market.list_model(seller, "b" * 300, "c" * 300, PRICE)[0],
    }
    models = {
        "external": put(hostile_models.external_data()),
        "absurd": put(hostile_models.huge_declared_dims()),
        "garbage": put(hostile_models.random_bytes()),
    }
    refused = {
        k: market.list_model(seller, v, put(orjson.dumps({"name": k})), PRICE)[0]
        for k, v in models.items()
    }
    after, _ = market.list_model(seller, good_model, put(b'{"name": "after"}'), PRICE)
    mine(market, CONFIRMATIONS)

    idx = make_indexer(market, database, store=store)
    idx.run_once()
    with idx.sessions() as s:
        card = {k: s.get(Listing, i) for k, i in ids.items()}
        cids = {k: s.get(Listing, i) for k, i in bad_cids.items()}
        model = {k: s.get(Listing, i) for k, i in refused.items()}
        last = s.get(Listing, after)
    assert card["nul"].card_status == "control_chars" and "U+0000" in card["nul"].card_error
    assert card["nul_in_key"].card_status == "control_chars"
    assert card["raw_control"].card_status in ("control_chars", "invalid_json")
    assert card["bidi"].card_status == "invisible_chars"
    assert card["zero_width"].card_status == "invisible_chars"
    assert card["surrogate"].card_status == "invalid_unicode"
    assert card["confusable"].card_status == "ok"
    assert card["confusable"].card_flags == ["name_mixed_scripts"]
    for listing in card.values():
        assert listing.model_status == "ok"  # the card's problems are the card's
    for listing in cids.values():
        assert listing.model_cid.startswith("!") and len(listing.model_cid) <= 128
        assert listing.model_status == "invalid_cid"
    assert cids["long_cid"].card_status == "invalid_card"
    assert model["external"].model_status == "external_data"
    assert model["absurd"].model_status == "absurd_shape"
    assert model["garbage"].model_status == "not_onnx"
    assert all(m.model_error for m in model.values())
    # and the listing after all of them is indexed and offered
    assert last.card_status == "ok" and last.name == "after" and last.model_status == "ok"
    assert last.signature["inputs"][0]["name"] == "x"


def test_the_follower_never_dies_and_shows_in_health(node, sqlite_url):
    import threading
    import time

    from web3 import Web3

    from marketplace.devstack.ports import free_port

    market, _ = node
    idx = make_indexer(market, sqlite_url)
    idx.run_once()
    live = idx.w3
    # a real fault: the chain's endpoint stops answering (nothing listens there)
    idx.w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{free_port()}", {"timeout": 1}))
    stop, errors_seen = threading.Event(), []
    worker = threading.Thread(
        target=follow,
        args=(idx, stop),
        kwargs={"interval": 0.05, "max_backoff": 0.2, "on_error": errors_seen.append},
    )
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while len(errors_seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        with idx.sessions() as s:
            sick = health(s, market.deployment)
        assert worker.is_alive() and len(errors_seen) >= 3
        assert sick["status"] == "failing" and sick["failures"] >= 3
        assert sick["last_error"] == "chain_unavailable"
        assert "JSON-RPC" in errors_seen[0]
        idx.w3 = live  # the endpoint is back: the follower recovers by itself
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with idx.sessions() as s:
                healthy = health(s, market.deployment)
            if healthy["status"] == "ok":
                break
            time.sleep(0.05)
        assert healthy["status"] == "ok" and healthy["last_error"] is None
    finally:
        stop.set()
        worker.join(10)


def test_unreachable_content_is_fetched_again_only_after_a_backoff(node, sqlite_url, tmp_path):
    market, (_, seller, *_) = node
    store = LocalStore(tmp_path / "store")
    missing = "bafkreigvbaxog5r4lawrzok3j2ai2sxbohyinqc7fmgapwjqmpl66jp3ty"
    model_id, _ = market.list_model(seller, missing, missing, PRICE)
    mine(market, CONFIRMATIONS)
    idx = make_indexer(market, sqlite_url, store=store)
    for _ in range(3):  # three passes: one fetch, then the backoff holds
        idx.run_once()
    with idx.sessions() as s:
        listing = s.get(Listing, model_id)
    assert (listing.card_status, listing.model_status) == ("unavailable", "unavailable")
    assert (listing.card_attempts, listing.model_attempts) == (1, 1)
    assert listing.card_retry_at > time.time() + 20
    assert "content_not_found" in listing.card_error  # the store's code, not its message
    # once the backoff is over, the next pass tries again
    with idx.sessions() as s, s.begin():
        s.get(Listing, model_id).card_retry_at = 0.0
    idx.run_once()
    with idx.sessions() as s:
        assert s.get(Listing, model_id).card_attempts == 2  # tried again, still missing
