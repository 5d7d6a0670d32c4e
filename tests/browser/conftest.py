"""The storefront in a real browser: Debian's Chromium driven by Playwright (never
`playwright install`), the app on a real HTTP server on a free loopback port, a real
anvil, and an EIP-1193 wallet injected into every page that signs with a test key and
forwards everything else to anvil."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from playwright.sync_api import Browser, Page, sync_playwright
from web3 import Web3

from inference.demos import DEMO_DIR
from marketplace.bootstrap import make_indexer
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import connect
from marketplace.config import PROJECT_ROOT, Settings
from marketplace.db.migrate import migrate
from marketplace.devstack.anvil import dev_key, dev_signers, start_anvil
from marketplace.devstack.ports import free_port
from storage.local import LocalStore
from tests.support.launchers import serving
from tests.support.market import funded_market
from tests.support.paths import ANVIL_BIN

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = PROJECT_ROOT / "build" / "screenshots"
PRICE = 10**15  # 0.001 MMT

pytestmark = pytest.mark.slow

PROVIDER = """
(() => {
  window.ethereum = {
    isModelMarketTestWallet: true,
    request: async ({ method, params }) => {
      const answer = JSON.parse(await window.__mmWallet(method, JSON.stringify(params || [])));
      if (answer.error) {
        const err = new Error(answer.error.message);
        err.code = answer.error.code;
        throw err;
      }
      return answer.result;
    },
    on: () => {},
    removeListener: () => {},
  };
})();
"""


class WalletRefusal(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Wallet:
    """The test's EIP-1193 wallet: one account, a chain it says it is on, methods the
    user refuses, and a hook run just before a transaction is sent."""

    w3: Web3
    key: str
    chain_id: int
    switchable: bool = True
    refuse: set[str] = field(default_factory=set)
    before_send: Callable[[dict[str, Any]], None] | None = None
    sent: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return str(Account.from_key(self.key).address)

    def __call__(self, method: str, params_json: str) -> str:
        try:
            return json.dumps({"result": self.handle(method, json.loads(params_json))})
        except WalletRefusal as exc:
            return json.dumps({"error": {"code": exc.code, "message": exc.message}})

    def handle(self, method: str, params: list[Any]) -> Any:
        if method in self.refuse:
            raise WalletRefusal(4001, "User rejected the request.")
        if method in ("eth_requestAccounts", "eth_accounts"):
            return [self.address.lower()]
        if method == "eth_chainId":
            return hex(self.chain_id)
        if method == "wallet_switchEthereumChain":
            if not self.switchable:
                raise WalletRefusal(4902, "Unrecognized chain ID.")
            self.chain_id = int(params[0]["chainId"], 16)
            return None
        if method == "personal_sign":
            signed = Account.sign_message(encode_defunct(hexstr=params[0]), self.key)
            return "0x" + signed.signature.hex().removeprefix("0x")
        if method == "eth_sendTransaction":
            tx = params[0]
            if self.before_send is not None:
                self.before_send(tx)
            # a fixed gas limit, as a wallet whose estimate was made before the chain
            # changed: a purchase that reverts is mined and fails (status 0)
            signed = Account.sign_transaction(
                {
                    "to": Web3.to_checksum_address(tx["to"]),
                    "data": tx["data"],
                    "value": 0,
                    "gas": 500_000,
                    "gasPrice": self.w3.eth.gas_price,
                    "nonce": self.w3.eth.get_transaction_count(self.address),
                    "chainId": self.w3.eth.chain_id,
                },
                self.key,
            )
            sent = self.w3.eth.send_raw_transaction(signed.raw_transaction).to_0x_hex()
            self.sent.append(sent)
            return sent
        answer = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in answer:
            raise WalletRefusal(answer["error"].get("code", -32000), answer["error"]["message"])
        return answer["result"]


@dataclass
class Shop:
    settings: Settings
    market: Marketplace
    url: str
    model_id: int
    store: LocalStore

    def index(self) -> None:
        """Mine the blocks the indexer waits for, then run it once."""
        self.market.w3.provider.make_request(  # type: ignore[arg-type]
            "anvil_mine", [self.settings.confirmations]
        )
        make_indexer(self.settings).run_once()

    def list_model(self, card: dict[str, Any], seller: int = 1) -> int:
        model_cid = self.store.add(io.BytesIO((DEMO_DIR / "iris-classifier.onnx").read_bytes()))
        card_cid = self.store.add(io.BytesIO(orjson.dumps(card)))
        model_id, _ = self.market.list_model(dev_signers(5)[seller], model_cid, card_cid, PRICE)
        self.index()
        return model_id


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    """anvil with the contracts, iris listed and indexed, the app on a real server."""
    anvil = start_anvil(ANVIL_BIN)
    port = free_port()
    try:
        w3 = connect(anvil.rpc_url)
        market = funded_market(w3, dev_signers(5))
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path / "data",  # type: ignore[call-arg]
            rpc_url=anvil.rpc_url,
            confirmations=2,
            public_url=f"http://127.0.0.1:{port}",
        )
        market.deployment.save(settings.deployment_path)
        migrate(settings.db_url)
        with serving(settings, port):
            shop = Shop(settings, market, settings.public, 0, LocalStore(settings.store_dir))
            shop.model_id = shop.list_model(
                {"name": "Iris classifier", "description": "Three species.", "tags": ["tabular"]}
            )
            yield shop
    finally:
        anvil.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run make setup")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def wallet(shop: Shop) -> Wallet:
    """Dev account 2's wallet, on the market's chain."""
    return Wallet(shop.market.w3, dev_key(2), shop.market.deployment.chain_id)


@pytest.fixture
def page(browser: Browser, wallet: Wallet) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.expose_function("__mmWallet", wallet)
    context.add_init_script(PROVIDER)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def screenshot(page: Page, name: str) -> Path:
    """Write a full-page screenshot to build/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
