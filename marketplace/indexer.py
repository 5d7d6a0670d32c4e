"""Chain events into the database: listings, prices, purchases (credited through the
ledger), applied only after N confirmations, undone and re-applied on a reorg.

Idempotent and safe to run twice at once: each event is unique by (tx hash, log index),
and each batch runs under a lock (a PostgreSQL advisory lock; SQLite's write lock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import orjson
from hexbytes import HexBytes
from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BlockNotFound

from marketplace import chain, errors, ledger
from marketplace.events import Event, EventDecoder
from marketplace.models import BlockHash, ChainEvent, IndexerState, Listing
from storage import cid
from storage.errors import ContentMismatch, ContentTooLarge, StorageError
from storage.store import ContentStore

LOCK_KEY = 0x6D6D6B7431  # "mmkt1": the advisory lock every indexer takes

CARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": {"type": "string", "maxLength": 20_000},
        "license": {"type": "string", "maxLength": 100},
        "tags": {
            "type": "array",
            "maxItems": 32,
            "items": {"type": "string", "minLength": 1, "maxLength": 50},
        },
        "signature": {"type": "object"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
}


@dataclass
class Progress:
    """How far a catch-up is; given to the progress callback after each batch."""

    start_block: int
    current_block: int
    target_block: int
    events: int
    started: float = field(default_factory=time.monotonic)

    @property
    def blocks_left(self) -> int:
        return max(0, self.target_block - self.current_block)

    @property
    def blocks_per_s(self) -> float:
        return (self.current_block - self.start_block + 1) / max(
            time.monotonic() - self.started, 1e-9
        )

    @property
    def events_per_s(self) -> float:
        return self.events / max(time.monotonic() - self.started, 1e-9)


@dataclass
class RunResult:
    """What one `run_once` did."""

    last_block: int
    events: int
    reorged_from: int | None = None
    cards: int = 0


class Indexer:
    """Indexes one marketplace deployment into one database."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        w3: Web3,
        deployment: chain.Deployment,
        artifacts_dir: Any,
        *,
        confirmations: int = 2,
        batch_blocks: int = 2000,
        reorg_depth: int = 64,
        store: ContentStore | None = None,
        max_card_bytes: int = 64 * 1024,
        card_timeout: float = 10.0,
    ) -> None:
        self.sessions = sessions
        self.w3 = w3
        self.deployment = deployment
        abi = chain.load_artifact(artifacts_dir, "ModelMarketplace").abi
        self.contract: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(deployment.marketplace), abi=abi
        )
        self.address = self.contract.address
        self.confirmations = confirmations
        self.batch_blocks = batch_blocks
        self.reorg_depth = reorg_depth
        self.store = store
        self.max_card_bytes = max_card_bytes
        self.card_timeout = card_timeout
        self.events = EventDecoder(abi, self.address)

    # ----------------------------------------------------------------- driving

    def run_once(self, progress: Callable[[Progress], None] | None = None) -> RunResult:
        """Catch up to `head - confirmations`, handling a reorg first if one happened."""
        with chain.rpc_errors():
            head = self.w3.eth.block_number
        target = head - self.confirmations
        reorged = self._check_reorg()
        total = 0
        with self.sessions() as session, session.begin():
            self._lock(session)
            last = self._state(session).last_block
        tracker = Progress(last + 1, last, target, 0)
        while last < target:
            end = min(last + self.batch_blocks, target)
            count = self._index_range(last + 1, end)
            total += count
            last = end
            tracker.current_block, tracker.events = end, total
            if progress:
                progress(tracker)
        cards = self.fetch_cards() if self.store is not None else 0
        return RunResult(last, total, reorged, cards)

    # -------------------------------------------------------------- internals

    def _lock(self, session: Session) -> None:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        # SQLite: the engine's BEGIN IMMEDIATE already holds the database's write lock

    def _state(self, session: Session) -> IndexerState:
        state = session.get(IndexerState, self.address)
        if state is None:
            state = IndexerState(
                contract=self.address,
                chain_id=self.deployment.chain_id,
                last_block=self.deployment.start_block - 1,
            )
            session.add(state)
            session.flush()
        return state

    def _block_hash(self, number: int) -> str:
        """The canonical hash at `number`; "" when the chain is now shorter than that."""
        with chain.rpc_errors():
            try:
                return HexBytes(self.w3.eth.get_block(number)["hash"]).to_0x_hex()
            except BlockNotFound:
                return ""

    def _check_reorg(self) -> int | None:
        """If a stored block hash is no longer canonical, undo everything above the last
        block that still is. Returns the fork block, or None."""
        with self.sessions() as session, session.begin():
            self._lock(session)
            stored = session.execute(
                select(BlockHash.number, BlockHash.hash).order_by(BlockHash.number.desc())
            ).all()
            if not stored or self._block_hash(stored[0][0]) == stored[0][1]:
                return None
            fork = None
            for number, block_hash in stored[1:]:
                if self._block_hash(number) == block_hash:
                    fork = number
                    break
            if fork is None:
                raise errors.ChainError(
                    f"a reorg deeper than the {len(stored)} blocks the indexer remembers;"
                    " re-index from scratch"
                )
            self._rollback(session, fork)
            return int(fork)

    def _rollback(self, session: Session, fork: int) -> None:
        orphaned = (
            session.execute(select(ChainEvent).where(ChainEvent.block_number > fork))
            .scalars()
            .all()
        )
        touched: set[int] = set()
        for event in orphaned:
            if event.name == "Purchased":
                ledger.revoke(session, event.tx_hash, event.log_index)
            else:
                touched.add(event.model_id)
        session.execute(delete(ChainEvent).where(ChainEvent.block_number > fork))
        session.execute(delete(BlockHash).where(BlockHash.number > fork))
        for model_id in touched:
            self._rebuild_listing(session, model_id)
        self._state(session).last_block = fork

    def _rebuild_listing(self, session: Session, model_id: int) -> None:
        """Replay a listing's surviving events (its card, if fetched, is kept)."""
        events = (
            session.execute(
                select(ChainEvent)
                .where(ChainEvent.model_id == model_id, ChainEvent.name != "Purchased")
                .order_by(ChainEvent.block_number, ChainEvent.log_index)
            )
            .scalars()
            .all()
        )
        listing = session.get(Listing, model_id)
        if not events or events[0].name != "ModelListed":
            if listing is not None:
                session.delete(listing)
            return
        for event in events:
            self._apply_listing_event(session, event.name, event.args, event.block_number)

    def _index_range(self, start: int, end: int) -> int:
        # Remember the hashes of `end` and of blocks 1, 2, 4, ... below it (down to the
        # block before this range): a later reorg is found within a factor of two of its
        # depth without fetching every block.
        checkpoints = {end}
        step = 1
        while end - step >= max(start - 1, 0) and step < self.reorg_depth:
            checkpoints.add(end - step)
            step *= 2
        checkpoints.add(max(start - 1, 0))
        with chain.rpc_errors():
            logs = self.w3.eth.get_logs(
                {"address": self.address, "fromBlock": start, "toBlock": end}
            )
            known = {n: self._block_hash(n) for n in sorted(checkpoints)}
        decoded = self.events.decode(logs)
        with self.sessions() as session, session.begin():
            self._lock(session)
            state = self._state(session)
            if state.last_block >= end:  # another indexer got here first
                return 0
            applied = self._apply_all(session, decoded)
            hashes: dict[int, str] = dict(known)
            for event in decoded:
                hashes[event.block_number] = event.block_hash
            for number, block_hash in hashes.items():
                session.merge(BlockHash(number=number, hash=block_hash))
            session.execute(delete(BlockHash).where(BlockHash.number <= end - self.reorg_depth))
            state.last_block = end
        return applied

    def _apply_all(self, session: Session, decoded: list[Event]) -> int:
        """Record the events (each once) and apply the new ones, in chain order."""
        if not decoded:
            return 0
        rows = [
            {
                "block_number": e.block_number,
                "block_hash": e.block_hash,
                "tx_hash": e.tx_hash,
                "log_index": e.log_index,
                "name": e.name,
                "model_id": e.args["modelId"],
                # uint256 go to JSON as strings: JSON numbers lose precision past 2^53
                "args": {k: str(v) if isinstance(v, int) else v for k, v in e.args.items()},
            }
            for e in decoded
        ]
        dialect = session.get_bind().dialect.name
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ChainEvent)
        new = {
            (tx, index)
            for tx, index in session.execute(
                insert.on_conflict_do_nothing(index_elements=["tx_hash", "log_index"]).returning(
                    ChainEvent.tx_hash, ChainEvent.log_index
                ),
                rows,
            )
        }
        purchases = []
        for row, event in zip(rows, decoded, strict=True):
            if (row["tx_hash"], row["log_index"]) not in new:
                continue
            name, args = event.name, event.args
            if name == "Purchased":
                purchases.append(
                    {
                        "tx_hash": row["tx_hash"],
                        "log_index": row["log_index"],
                        "buyer": args["buyer"],
                        "model_id": args["modelId"],
                        "calls": args["calls"],
                        "amount": args["amount"],
                        "fee": args["fee"],
                        "block_number": row["block_number"],
                        "block_hash": row["block_hash"],
                        "source": "indexer",
                    }
                )
            else:
                self._apply_listing_event(session, name, row["args"], row["block_number"])
        ledger.credit_many(session, purchases)
        return len(new)

    def _apply_listing_event(
        self, session: Session, name: str, args: dict[str, Any], block: int
    ) -> None:
        model_id = int(args["modelId"])
        listing = session.get(Listing, model_id)
        if name == "ModelListed":
            if listing is None:
                listing = Listing(model_id=model_id, card_status="pending", tags=[])
                session.add(listing)
            listing.seller = str(args["seller"]).lower()
            listing.token = str(args["token"]).lower()
            listing.model_cid = str(args["modelCid"])
            listing.metadata_cid = str(args["metadataCid"])
            listing.price_per_call = int(args["pricePerCall"])
            listing.active = True
            listing.listed_block = block
            listing.updated_block = block
            return
        if listing is None:  # cannot happen on a consistent chain; never crash on it
            return
        if name == "PriceChanged":
            listing.price_per_call = int(args["newPrice"])
        elif name == "ModelDelisted":
            listing.active = False
        elif name == "ModelRelisted":
            listing.active = True
        listing.updated_block = block

    # ------------------------------------------------------------- model cards

    def fetch_cards(self) -> int:
        """Fetch, verify and validate pending model cards; returns how many were settled.
        A bad card marks its listing with the reason and never stops the indexer."""
        assert self.store is not None
        with self.sessions() as session:
            pending = session.execute(
                select(Listing.model_id, Listing.metadata_cid).where(
                    Listing.card_status.in_(("pending", "unavailable"))
                )
            ).all()
        settled = 0
        for model_id, metadata_cid in pending:
            status, error, card = self._fetch_card(metadata_cid)
            with self.sessions() as session, session.begin():
                listing = session.get(Listing, model_id)
                if listing is None or listing.metadata_cid != metadata_cid:
                    continue
                listing.card_status, listing.card_error, listing.card = status, error, card
                if card is not None:
                    listing.name = card["name"]
                    listing.description = card.get("description")
                    listing.license = card.get("license")
                    listing.tags = list(card.get("tags", []))
            settled += status != "unavailable"
        return settled

    def _fetch_card(self, metadata_cid: str) -> tuple[str, str | None, dict[str, Any] | None]:
        assert self.store is not None
        pieces: list[bytes] = []
        try:
            cid.verify(
                self.store.cat(metadata_cid, timeout=self.card_timeout),
                metadata_cid,
                sink=pieces.append,
                max_bytes=self.max_card_bytes,
            )
        except ContentTooLarge:
            return "too_large", f"the card is over {self.max_card_bytes} bytes", None
        except ContentMismatch as exc:
            return "cid_mismatch", exc.message, None
        except StorageError as exc:
            if exc.code == "invalid_cid":
                return "invalid_card", exc.message, None
            return "unavailable", exc.message, None
        try:
            card = orjson.loads(b"".join(pieces))
        except orjson.JSONDecodeError as exc:
            return "invalid_json", f"the card is not JSON: {exc}"[:300], None
        try:
            jsonschema.validate(card, CARD_SCHEMA)
        except jsonschema.ValidationError as exc:
            return "invalid_card", f"the card does not fit the schema: {exc.message}"[:300], None
        return "ok", None, card
