"""The storefront as a buyer uses it, in Chromium with a wallet: sign in, buy through the
page, make a key, call the model with it; hostile listings render as text; every wallet
failure says what happened and moves no credit. Screenshots go to build/screenshots."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest
import requests
from playwright.sync_api import Page, expect
from sqlalchemy import select

from inference import codecs
from marketplace.chain.transactions import calldata
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import Credit
from marketplace.devstack.anvil import dev_key, dev_signers
from marketplace.devstack.ports import free_port
from tests.browser.conftest import PRICE, Shop, Wallet, screenshot

pytestmark = pytest.mark.slow


def credits_of(shop: Shop, address: str) -> dict[int, int]:
    with session_factory(make_engine(shop.settings.db_url))() as s:
        rows = s.scalars(select(Credit).where(Credit.buyer == address.lower())).all()
        return {c.model_id: c.remaining for c in rows}


def step_done(page: Page, step: str) -> None:
    expect(page.locator(f'#steps li[data-step="{step}"]')).to_have_class("done")


def test_sign_in_buy_make_a_key_and_call_the_model(shop: Shop, page: Page, wallet: Wallet):
    page.goto(shop.url + "/")
    expect(page.get_by_role("heading", name="Iris classifier")).to_be_visible()
    expect(page.locator(".card .price")).to_have_text("0.001 MMT")
    screenshot(page, "01-catalog")

    page.get_by_role("link", name="Iris classifier").click()
    expect(page.get_by_role("heading", name="Iris classifier", level=1)).to_be_visible()
    expect(page.locator("#model-cid")).to_have_text(shop.market.listing(shop.model_id).model_cid)
    page.fill("#calls", "10")
    expect(page.locator("#total")).to_have_text("0.01 MMT")
    screenshot(page, "02-model-page")

    page.get_by_role("button", name="Buy with my wallet").click()
    step_done(page, "signin")
    step_done(page, "purchase")
    # the gateway wants 2 confirmations: the page counts the blocks mined on top
    confirm = page.locator('#steps li[data-step="confirm"]')
    expect(confirm).to_contain_text("0 of 2")
    screenshot(page, "03-buy-confirming")
    shop.market.w3.provider.make_request("anvil_mine", [1])  # type: ignore[arg-type]
    expect(confirm).to_contain_text("1 of 2")
    shop.market.w3.provider.make_request("anvil_mine", [1])  # type: ignore[arg-type]
    expect(page.locator("#balance")).to_have_text("You now hold 10 calls of this model.")
    expect(page.locator("#who")).to_contain_text("Signed in as 0x3C44")
    screenshot(page, "04-buy-done")
    assert credits_of(shop, wallet.address) == {shop.model_id: 10}

    page.get_by_role("navigation", name="Main").get_by_role("link", name="My account").click()
    page.fill("#key-name", "my script")
    page.get_by_role("button", name="Create a key").click()
    expect(page.locator("#new-key-text")).to_have_text(re.compile(r"^mm_[0-9a-f]{16}_"))
    key = page.locator("#new-key-text").inner_text()
    screenshot(page, "05-my-keys")

    body, headers = codecs.encode_request(
        {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
    )
    paid = requests.post(
        f"{shop.url}/v2/models/{shop.model_id}/infer",
        data=body,
        headers={**headers, "Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert paid.status_code == 200, paid.text
    assert paid.headers["X-Credits-Remaining"] == "9"

    page.reload()
    shown = page.locator(f'#credits tr[data-model-id="{shop.model_id}"] .left').inner_text()
    api = requests.get(
        f"{shop.url}/api/v1/credits", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).json()
    assert int(shown) == api[0]["remaining"] == 9
    screenshot(page, "06-my-credits")

    seller = dev_signers(2)[1].address
    page.goto(f"{shop.url}/sellers/{seller}")
    expect(page.locator("#earnings-chart polyline")).to_have_count(1)
    expect(page.locator('#listings tr[data-model-id="1"] td').nth(3)).to_have_text("10")
    screenshot(page, "07-seller-dashboard")


class _Listener(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP server that must get no request."""
    port = free_port()
    _Listener.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", port), _Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port, _Listener.hits
    server.shutdown()
    thread.join(5)


def test_a_hostile_card_renders_as_text_and_runs_nothing(
    shop: Shop, page: Page, listener: tuple[int, list[str]]
):
    port, hits = listener
    leak = f"http://127.0.0.1:{port}"
    name = "<script>window.__pwned = 1</script>Evil"
    card = {
        "name": name,
        "description": (
            f'<img src="{leak}/img" onerror="window.__pwned = 2">'
            f'<a href="javascript:window.__pwned = 3">click</a>'
            f"<style>body {{ background: url({leak}/css) }}</style>"
            f'<iframe src="{leak}/frame"></iframe>'
        ),
        "license": "</code><script>window.__pwned = 4</script>",
        "tags": ["<b>bold</b>", "javascript:alert(1)"],
    }
    model_id = shop.list_model(card)
    for path in (
        "/",
        f"/models/{model_id}",
        "/?tag=javascript:alert(1)",
        "/sellers/" + dev_signers(2)[1].address,
    ):
        page.goto(shop.url + path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__pwned") is None, path
    page.goto(f"{shop.url}/models/{model_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    expect(page.locator(".desc")).to_contain_text('<img src="')
    assert page.locator("main script, main img, main iframe, main style").count() == 0
    screenshot(page, "08-hostile-card")
    assert hits == [], "the page fetched from the listing's text"


@pytest.fixture
def on_model_page(shop: Shop, page: Page) -> Page:
    page.goto(f"{shop.url}/models/{shop.model_id}")
    page.fill("#calls", "3")
    return page


def _no_credit_moved(shop: Shop, wallet: Wallet, balance: int) -> None:
    assert credits_of(shop, wallet.address) == {}
    assert shop.market.token_balance(wallet.address) == balance


def test_a_refused_signature_says_so_and_moves_nothing(
    shop: Shop, on_model_page: Page, wallet: Wallet
):
    balance = shop.market.token_balance(wallet.address)
    wallet.refuse.add("personal_sign")
    on_model_page.get_by_role("button", name="Buy with my wallet").click()
    expect(on_model_page.locator("#buy-message")).to_contain_text("You rejected the request")
    expect(on_model_page.locator('#steps li[data-step="signin"]')).to_have_class("failed")
    screenshot(on_model_page, "09-refused-signature")
    _no_credit_moved(shop, wallet, balance)


def test_a_wrong_chain_says_so_and_moves_nothing(shop: Shop, on_model_page: Page, wallet: Wallet):
    balance = shop.market.token_balance(wallet.address)
    wallet.chain_id, wallet.switchable = 1, False
    on_model_page.get_by_role("button", name="Buy with my wallet").click()
    expect(on_model_page.locator("#buy-message")).to_contain_text(
        f"Your wallet is on chain 1; this market runs on chain {shop.market.deployment.chain_id}"
    )
    screenshot(on_model_page, "10-wrong-chain")
    _no_credit_moved(shop, wallet, balance)
    assert wallet.sent == []


def test_a_reverted_purchase_says_so_and_moves_nothing(
    shop: Shop, on_model_page: Page, wallet: Wallet
):
    balance = shop.market.token_balance(wallet.address)
    purchase = calldata("purchase(uint256,uint256,uint256)", 0, 0, 0)[:10]
    seller = dev_signers(2)[1]

    def seller_raises_the_price(tx: dict[str, Any]) -> None:
        if tx["data"].startswith(purchase):  # while the buyer's purchase is on its way
            shop.market.set_price(seller, shop.model_id, 2 * PRICE)

    wallet.before_send = seller_raises_the_price
    on_model_page.get_by_role("button", name="Buy with my wallet").click()
    expect(on_model_page.locator("#buy-message")).to_contain_text("The purchase reverted on-chain")
    screenshot(on_model_page, "11-reverted-purchase")
    _no_credit_moved(shop, wallet, balance)
    assert len(wallet.sent) == 2  # the approval, then the purchase that reverted
    # and nothing is left pending for the next visit to settle
    assert on_model_page.evaluate("localStorage.getItem('modelmarket.pending')") == "[]"


def test_a_narrow_screen_and_the_keyboard_reach_everything(shop: Shop, page: Page):
    """At a phone's width no page scrolls sideways; the buy form works from the keyboard
    alone (here up to the wallet, which the test wallet refuses)."""
    page.set_viewport_size({"width": 375, "height": 800})
    seller = dev_signers(2)[1].address
    for path in ("/", f"/models/{shop.model_id}", "/account", f"/sellers/{seller}"):
        page.goto(shop.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width}px wide on a 375px screen"
    page.goto(f"{shop.url}/models/{shop.model_id}")
    screenshot(page, "12-model-page-narrow")
    page.locator("#calls").focus()
    page.keyboard.press("Control+a")
    page.keyboard.type("4")
    expect(page.locator("#total")).to_have_text("0.004 MMT")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "buy-button"


def test_a_page_closed_half_way_loses_nothing(shop: Shop, page: Page, wallet: Wallet):
    """The buyer closes the page while the purchase confirms: the indexer credits it, and
    the next visit says so."""
    page.goto(f"{shop.url}/models/{shop.model_id}")
    page.fill("#calls", "3")
    page.get_by_role("button", name="Buy with my wallet").click()
    expect(page.locator('#steps li[data-step="confirm"]')).to_contain_text("0 of 2")
    context = page.context
    page.close()
    shop.index()  # mines the confirmations, then credits the purchase from its event
    assert credits_of(shop, wallet.address) == {shop.model_id: 3}
    again = context.new_page()
    again.goto(f"{shop.url}/account")
    expect(again.locator("#notice")).to_contain_text("was credited while you were away")
    expect(again.locator(f'#credits tr[data-model-id="{shop.model_id}"] .left')).to_have_text("3")
    screenshot(again, "13-credited-while-away")
    assert again.evaluate("localStorage.getItem('modelmarket.pending')") == "[]"


def test_the_seller_withdraws_reprices_and_delists_from_the_dashboard(
    shop: Shop, page: Page, wallet: Wallet
):
    buyer, seller = dev_signers(3)[2], dev_signers(2)[1]
    shop.market.approve(buyer, 4 * PRICE)
    shop.market.purchase(buyer, shop.model_id, 4, PRICE)
    shop.index()
    owed = shop.market.earnings(seller.address)
    assert owed == 4 * PRICE * 9750 // 10_000

    wallet.key = dev_key(1)  # the seller's wallet now
    page.goto(f"{shop.url}/account")
    page.locator("#account-sign-in").click()
    expect(page.locator("#address")).to_have_text(seller.address.lower())
    page.get_by_role("link", name="Seller dashboard").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("My seller dashboard")
    expect(page.locator("#owed")).to_have_text("0.0039 MMT")
    screenshot(page, "14-my-dashboard")

    before = shop.market.token_balance(seller.address)
    page.get_by_role("button", name="Withdraw").click()
    expect(page.locator("#seller-message")).to_contain_text("Withdraw: done")
    assert shop.market.token_balance(seller.address) == before + owed
    assert shop.market.earnings(seller.address) == 0

    page.goto(f"{shop.url}/sellers/{seller.address}")
    page.fill(f"#price-{shop.model_id}", "0.0025")
    page.get_by_role("button", name="Set price").click()
    expect(page.locator("#seller-message")).to_contain_text("Set price: done")
    assert shop.market.listing(shop.model_id).price_per_call == 25 * 10**14

    page.goto(f"{shop.url}/sellers/{seller.address}")
    page.fill(f"#price-{shop.model_id}", "abc")
    page.get_by_role("button", name="Set price").click()
    expect(page.locator("#seller-message")).to_contain_text("Write the price as a number")

    page.get_by_role("button", name="Delist").click()
    expect(page.locator("#seller-message")).to_contain_text("Delist: done")
    assert shop.market.listing(shop.model_id).active is False
    shop.index()
    page.goto(f"{shop.url}/sellers/{seller.address}")
    expect(page.locator(f'#listings tr[data-model-id="{shop.model_id}"] td').nth(1)).to_have_text(
        "delisted"
    )
