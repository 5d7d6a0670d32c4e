"""The demo market `make run` opens: a demo seller publishes the demo models through the
same path as `modelmarket upload`, a demo buyer signs in and buys calls through the
buyer SDK, and the terminal gets a `curl` of a paid call that works as printed. Run
again, it reuses what is there: no listing twice, no purchase while calls are left."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from inference.demos import DEMO_DIR, minilm_model_path
from marketplace import errors
from marketplace.catalog.publish import CardText, checked_card, publish
from marketplace.catalog.units import parse_price
from marketplace.chain.market import Marketplace
from marketplace.client import ModelMarketClient
from marketplace.config import Settings
from marketplace.devstack.anvil import dev_signers
from marketplace.indexer.model_checks import ModelChecks
from storage import cid
from storage.store import ContentStore

SELLER, BUYER = 1, 2  # dev accounts
DEMO_CALLS = 100
READY_WAIT = 120.0  # seconds for the indexer to list and check a demo model
IRIS_INPUT = [5.1, 3.5, 1.4, 0.2]
IRIS = "Iris classifier"


@dataclass(frozen=True)
class DemoModel:
    path: Path
    card: CardText
    price: str  # token units


def demo_models() -> list[DemoModel]:
    """The demo models this checkout has (MiniLM when its package is installed)."""
    models = [
        DemoModel(
            DEMO_DIR / "iris-classifier.onnx",
            CardText(
                IRIS,
                "Iris species from four flower measurements.",
                "MIT",
                ("tabular", "classification", "demo"),
            ),
            "0.001",
        ),
        DemoModel(
            DEMO_DIR / "house-price-regressor.onnx",
            CardText(
                "House price regressor",
                "A price from eight house features.",
                "MIT",
                ("tabular", "regression", "demo"),
            ),
            "0.002",
        ),
        DemoModel(
            DEMO_DIR / "tiny-cnn.onnx",
            CardText(
                "Tiny CNN", "A small image classifier (1x3x32x32).", "MIT", ("vision", "demo")
            ),
            "0.005",
        ),
    ]
    minilm = minilm_model_path()
    if minilm is not None:
        models.append(
            DemoModel(
                minilm,
                CardText(
                    "MiniLM L6 (int8)",
                    "Sentence embeddings (all-MiniLM-L6-v2, int8).",
                    "Apache-2.0",
                    ("text", "embeddings", "demo"),
                ),
                "0.01",
            )
        )
    return models


def seed(
    settings: Settings,
    market: Marketplace,
    store: ContentStore,
    checks: ModelChecks,
    *,
    progress: Callable[[str], None],
) -> dict[str, int]:
    """List each demo model the demo seller has not listed yet; returns name -> model id."""
    seller = dev_signers()[SELLER]
    listed: dict[str, int] = {}
    for model_id in range(1, market.listing_count() + 1):
        listing = market.listing(model_id)
        if listing.seller.lower() == seller.address.lower():
            listed[cid.normalize(listing.model_cid)] = model_id
    decimals = market.token_decimals()
    ids = {}
    for demo in demo_models():
        data = demo.path.read_bytes()
        known = listed.get(cid.normalize(cid.compute_bytes(data)))
        if known is not None:
            ids[demo.card.name] = known
            continue
        card = checked_card(data, demo.card, checks, max_card_bytes=settings.max_card_bytes)
        done = publish(market, store, seller, data, card, parse_price(demo.price, decimals))
        progress(f"listed {demo.card.name} as model {done.model_id} ({len(data):,} bytes)")
        ids[demo.card.name] = done.model_id
    return ids


def open_for_business(
    settings: Settings,
    market: Marketplace,
    ids: dict[str, int],
    *,
    progress: Callable[[str], None],
) -> str:
    """Every demo model offered, and the demo buyer signed in (its key kept in the data
    dir) with calls on the iris model; returns a `curl` of a paid call that works as
    printed."""
    buyer = dev_signers()[BUYER]
    sdk = ModelMarketClient(settings.public)
    for listed in ids.values():
        _wait_until_offered(sdk, listed)
    model_id = ids[IRIS]
    saved = settings.data_dir / "demo-buyer.json"
    sdk.api_key = _saved_key(saved)
    try:
        left = sdk.credits().get(model_id, 0) if sdk.api_key else 0
    except errors.RemoteError:  # revoked, or another database: sign in again
        sdk.api_key = None
        left = 0
    if sdk.api_key is None:
        _keep(saved, sdk.sign_in(buyer, "demo"))
    if left < 10:
        price = int(sdk.model(model_id)["price_per_call"])
        receipt = market.purchase_with_permit(
            buyer, model_id, DEMO_CALLS, price, deadline=int(time.time()) + 3600
        )
        try:
            sdk.redeem(receipt["transactionHash"].to_0x_hex())
        except errors.RemoteError as exc:  # the indexer may credit it first: as good
            if exc.code != "receipt_already_redeemed":
                raise
        progress(f"the demo buyer bought {DEMO_CALLS} calls of model {model_id}")
    assert sdk.api_key is not None
    body = orjson.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": IRIS_INPUT}]}
    ).decode()
    return (
        f"curl -s -X POST {settings.public}/v2/models/{model_id}/infer"
        f" -H {shlex.quote('Authorization: Bearer ' + sdk.api_key)}"
        f" -H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


def _wait_until_offered(sdk: ModelMarketClient, model_id: int) -> None:
    deadline = time.monotonic() + READY_WAIT
    while True:
        try:
            if sdk.model(model_id).get("offered"):
                return
        except errors.RemoteError as exc:
            if exc.code != "not_found":
                raise
        if time.monotonic() > deadline:
            raise errors.ChainError(f"the indexer did not list demo model {model_id} in time")
        time.sleep(0.5)


def _saved_key(path: Path) -> str | None:
    try:
        key = json.loads(path.read_text()).get("api_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def _keep(path: Path, api_key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"api_key": api_key}, out)
