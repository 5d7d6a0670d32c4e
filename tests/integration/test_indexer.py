"""The indexer against a real anvil and the real contracts, on SQLite and PostgreSQL:
confirmations, reorgs before and after them, idempotence, two indexers at once, and
hostile model cards."""

from __future__ import annotations

import io
import threading

import orjson
from sqlalchemy import func, select

from marketplace.chain.market import Marketplace
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import ChainEvent, Credit, Listing, Purchase
from marketplace.indexer.content import ContentChecks
from marketplace.indexer.follow import Indexer
from marketplace.payments.prepaid import ledger
from storage.local import LocalStore
from storage.store import ContentStore
from tests.support.paths import ARTIFACTS

PRICE = 10**15
CONFIRMATIONS = 3


def make_indexer(
    market: Marketplace, url: str, store: ContentStore | None = None, **kw: int
) -> Indexer:
    """An indexer of `market` into `url`; given a store, it checks listings' content too."""
    engine = make_engine(url)
    return Indexer(
        session_factory(engine),
        market.w3,
        market.deployment,
        ARTIFACTS,
        confirmations=CONFIRMATIONS,
        content=ContentChecks(store) if store is not None else None,
        **kw,
    )


def mine(market: Marketplace, blocks: int) -> None:
    market.w3.provider.make_request("anvil_mine", [blocks])  # type: ignore[arg-type]


def reorg(market: Marketplace, depth: int) -> None:
    """Replace the last `depth` blocks with empty ones: their transactions are gone."""
    market.w3.provider.make_request("anvil_reorg", [depth, []])  # type: ignore[arg-type]


def credits_of(indexer: Indexer, buyer: str, model_id: int) -> int:
    with indexer.sessions() as s:
        return ledger.remaining(s, buyer, model_id)


def test_listing_and_purchase_after_confirmations(node, database):
    market, (_, seller, buyer, *_) = node
    model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", PRICE)
    market.purchase(buyer, model_id, 7, PRICE)
    idx = make_indexer(market, database)
    idx.run_once()
    with idx.sessions() as s:  # not confirmed yet: nothing applied
        assert s.scalar(select(func.count()).select_from(ChainEvent)) == 0
    mine(market, CONFIRMATIONS)
    result = idx.run_once()
    assert result.events == 2
    with idx.sessions() as s:
        listing = s.get(Listing, model_id)
        assert listing is not None and listing.price_per_call == PRICE and listing.active
        assert listing.seller == seller.address.lower()
    assert credits_of(idx, buyer.address, model_id) == 7
    # running again changes nothing
    assert idx.run_once().events == 0
    assert credits_of(idx, buyer.address, model_id) == 7


def test_price_and_delist_follow_the_chain(node, sqlite_url):
    market, (_, seller, *_) = node
    model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", PRICE)
    market.set_price(seller, model_id, PRICE * 5)
    market.delist(seller, model_id)
    mine(market, CONFIRMATIONS)
    idx = make_indexer(market, sqlite_url)
    idx.run_once()
    with idx.sessions() as s:
        listing = s.get(Listing, model_id)
        assert listing.price_per_call == PRICE * 5 and not listing.active


def test_reorg_before_confirmations_never_credits(node, database):
    market, (_, seller, buyer, *_) = node
    model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", PRICE)
    mine(market, CONFIRMATIONS)
    idx = make_indexer(market, database)
    idx.run_once()
    market.purchase(buyer, model_id, 5, PRICE)
    mine(market, 1)
    idx.run_once()  # the purchase has 1 confirmation of 3: not applied
    reorg(market, 2)  # the purchase's block is replaced
    mine(market, CONFIRMATIONS + 2)
    idx.run_once()
    assert credits_of(idx, buyer.address, model_id) == 0
    with idx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Purchase)) == 0


def test_reorg_after_confirmations_takes_the_credit_back(node, database):
    market, (_, seller, buyer, *_) = node
    model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", PRICE)
    mine(market, 2)
    market.purchase(buyer, model_id, 5, PRICE)
    mine(market, CONFIRMATIONS)
    idx = make_indexer(market, database)
    idx.run_once()
    assert credits_of(idx, buyer.address, model_id) == 5
    # a deep reorg: the purchase's block and everything after it are replaced
    reorg(market, CONFIRMATIONS + 1)
    mine(market, 2)
    result = idx.run_once()
    assert result.reorged_from is not None
    assert credits_of(idx, buyer.address, model_id) == 0
    with idx.sessions() as s:
        states = s.scalars(select(Purchase.state)).all()
        assert states == ["orphaned"]
        # what the DB holds is the canonical history: the listing (before the fork) only
        names = s.scalars(select(ChainEvent.name)).all()
        assert names == ["ModelListed"]
        credit = s.get(Credit, (buyer.address.lower(), model_id))
        assert credit is not None and credit.remaining == 0 and credit.purchased == 0


def test_reorg_that_removes_a_listing_removes_its_row(node, sqlite_url):
    market, (_, seller, *_) = node
    mine(market, 1)
    model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", PRICE)
    mine(market, CONFIRMATIONS)
    idx = make_indexer(market, sqlite_url)
    idx.run_once()
    reorg(market, CONFIRMATIONS + 1)
    mine(market, 1)
    idx.run_once()
    with idx.sessions() as s:
        assert s.get(Listing, model_id) is None


def test_two_indexers_at_once_write_every_event_once(node, pg_url):
    market, (_, seller, buyer, other, _) = node
    model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", PRICE)
    for i in range(20):
        market.purchase(buyer if i % 2 else other, model_id, i + 1, PRICE)
    mine(market, CONFIRMATIONS)
    indexers = [make_indexer(market, pg_url, batch_blocks=b) for b in (3, 7)]
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def run(idx: Indexer) -> None:
        try:
            barrier.wait()
            idx.run_once()
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in indexers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    with indexers[0].sessions() as s:
        assert s.scalar(select(func.count()).select_from(ChainEvent)) == 21
        assert s.scalar(select(func.count()).select_from(Purchase)) == 20
    expected_buyer = sum(i + 1 for i in range(20) if i % 2)
    expected_other = sum(i + 1 for i in range(20) if not i % 2)
    assert credits_of(indexers[0], buyer.address, model_id) == expected_buyer
    assert credits_of(indexers[0], other.address, model_id) == expected_other


def test_receipt_path_and_indexer_credit_once(node, sqlite_url):
    market, (_, seller, buyer, *_) = node
    model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", PRICE)
    receipt = market.purchase(buyer, model_id, 4, PRICE)
    (event,) = market.purchases(receipt)
    idx = make_indexer(market, sqlite_url)
    with idx.sessions() as s, s.begin():  # the receipt endpoint's path, first
        assert ledger.credit(
            s,
            ledger.PurchaseRecord(
                tx_hash=event.tx_hash,
                log_index=event.log_index,
                buyer=buyer.address,
                model_id=model_id,
                calls=4,
                amount=4 * PRICE,
                fee=0,
                block_number=event.block_number,
                block_hash=event.block_hash,
                source="receipt",
            ),
        )
    mine(market, CONFIRMATIONS)
    idx.run_once()
    assert credits_of(idx, buyer.address, model_id) == 4


# ------------------------------------------------------------------ model cards


def test_hostile_cards_mark_the_listing_and_the_indexer_goes_on(node, sqlite_url, tmp_path):
    market, (_, seller, *_) = node
    store = LocalStore(tmp_path / "store")

    def put(data: bytes) -> str:
        return store.add(io.BytesIO(data))

    script = put(
        orjson.dumps(
            {
                "name": "<script>alert(1)</script>",
                "description": "<img src=x onerror=alert(2)>",
                "tags": ["x"],
            }
        )
    )
    huge = put(orjson.dumps({"name": "big", "description": "x" * (10 << 20)}))
    not_json = put(b"{this is not json")
    wrong_schema = put(orjson.dumps({"description": "no name"}))
    tampered = put(orjson.dumps({"name": "tampered"}))
    blob = store.root / "blobs" / tampered
    blob.write_bytes(blob.read_bytes().replace(b"tampered", b"TAMPERED"))
    missing = "bafkreigvbaxog5r4lawrzok3j2ai2sxbohyinqc7fmgapwjqmpl66jp3ty"
    cards = {
        "script": script,
        "huge": huge,
        "not_json": not_json,
        "schema": wrong_schema,
        "tampered": tampered,
        "missing": missing,
    }
    ids = {k: market.list_model(seller, "bafk-model", v, PRICE)[0] for k, v in cards.items()}
    good_id, _ = market.list_model(
        seller,
        "bafk-model",
        put(orjson.dumps({"name": "Iris", "license": "MIT", "tags": ["tabular"]})),
        PRICE,
    )
    mine(market, CONFIRMATIONS)
    idx = make_indexer(market, sqlite_url, store=store)
    result = idx.run_once()
    assert result.events == 7
    with idx.sessions() as s:
        status = {
            k: (s.get(Listing, i).card_status, s.get(Listing, i).card_error) for k, i in ids.items()
        }
        good = s.get(Listing, good_id)
        stored_script = s.get(Listing, ids["script"])
        visible = s.scalar(select(func.count()).select_from(Listing))
    assert status["script"][0] == "ok"  # stored as untrusted text; the storefront escapes it
    assert stored_script.name == "<script>alert(1)</script>"
    assert status["huge"] == ("too_large", "the card is over 65536 bytes")
    assert status["not_json"][0] == "invalid_json"
    assert status["schema"][0] == "invalid_card" and "'name' is a required" in status["schema"][1]
    assert status["tampered"][0] == "cid_mismatch"
    assert status["missing"][0] == "unavailable"
    assert good.card_status == "ok" and good.name == "Iris" and good.tags == ["tabular"]
    assert visible == 7  # every listing stays visible, marked


def test_reorg_to_a_shorter_chain(node, sqlite_url):
    market, (_, seller, buyer, *_) = node
    model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", PRICE)
    mine(market, 2)
    snapshot = market.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    market.purchase(buyer, model_id, 3, PRICE)
    mine(market, CONFIRMATIONS + 5)
    idx = make_indexer(market, sqlite_url)
    idx.run_once()
    assert credits_of(idx, buyer.address, model_id) == 3
    # the chain goes back to before the purchase: every later block is gone
    market.w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
    mine(market, CONFIRMATIONS)
    result = idx.run_once()
    assert result.reorged_from is not None
    assert credits_of(idx, buyer.address, model_id) == 0
