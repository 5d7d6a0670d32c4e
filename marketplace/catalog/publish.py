"""Publishing a model, the one path `modelmarket upload` and the demo market take: the
model checked as the indexer will check it (inspected, loaded once in a bounded child),
its card built and held to the card rules, both stored (every failure before any
transaction: no listing without its content), then `listModel`."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from marketplace import errors
from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import Signer
from marketplace.indexer.cards import parse_card
from marketplace.indexer.model_checks import ModelChecks, inspect_and_load
from storage.store import ContentStore


@dataclass(frozen=True)
class CardText:
    """What a seller says about a model."""

    name: str
    description: str | None = None
    license: str | None = None
    tags: tuple[str, ...] = ()
    supersedes: int | None = None  # the earlier listing this is a new version of


@dataclass(frozen=True)
class Published:
    """A listed model."""

    model_id: int
    model_cid: str
    card_cid: str
    tx_hash: str
    price_per_call: int


def checked_card(data: bytes, text: CardText, checks: ModelChecks, *, max_card_bytes: int) -> bytes:
    """The model's card, once the model passed the indexer's own inspection and load, and
    the card the card rules."""
    info, _load = inspect_and_load(data, checks)
    card: dict[str, object] = {
        "name": text.name,
        "signature": info.to_dict(),
        "sha256": info.sha256,
    }
    if text.description:
        card["description"] = text.description
    if text.license:
        card["license"] = text.license
    if text.tags:
        card["tags"] = list(text.tags)
    if text.supersedes is not None:
        card["supersedes"] = text.supersedes
    raw = orjson.dumps(card)
    verdict = parse_card(raw, max_bytes=max_card_bytes)
    if verdict.status != "ok":
        raise errors.BadRequest(f"the model card is refused ({verdict.status}): {verdict.error}")
    return raw


def publish(
    market: Marketplace,
    store: ContentStore,
    seller: Signer,
    data: bytes,
    card: bytes,
    price_per_call: int,
    *,
    token: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Published:
    """Store the model and its card, then list them."""
    model_cid = store.add(io.BytesIO(data), on_bytes=on_bytes)
    card_cid = store.add(io.BytesIO(card))
    model_id, receipt = market.list_model(seller, model_cid, card_cid, price_per_call, token)
    return Published(
        model_id, model_cid, card_cid, receipt["transactionHash"].to_0x_hex(), price_per_call
    )
