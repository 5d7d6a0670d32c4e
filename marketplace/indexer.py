"""Chain events into the database: listings, prices, purchases (credited through the
ledger), applied only after N confirmations, undone and re-applied on a reorg.

Idempotent and safe to run twice at once: each event is unique by (tx hash, log index),
and each batch runs under a lock (a PostgreSQL advisory lock; SQLite's write lock).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hexbytes import HexBytes
from sqlalchemy import and_, delete, or_, select, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BlockNotFound

from inference.errors import InferenceError, InvalidModel
from inference.inspect import Limits, inspect_bytes
from inference.probe import probe_load
from inference.runtime import RuntimeSettings
from marketplace import cards, chain, db, errors, ledger
from marketplace.events import Event, EventDecoder
from marketplace.models import BlockHash, ChainEvent, IndexerState, Listing
from storage import cid
from storage.errors import ContentMismatch, ContentTooLarge, StorageError
from storage.store import ContentStore

LOCK_KEY = 0x6D6D6B7431  # "mmkt1": the advisory lock every indexer takes

log = logging.getLogger("modelmarket.indexer")


class _HasStatus(Protocol):
    @property
    def status(self) -> str: ...


# what checking a card or a model found: cards.Card, ModelVerdict
_Outcome = TypeVar("_Outcome", bound=_HasStatus)


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
    models: int = 0


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
        model_checks: ModelChecks | None = None,
        check_budget: float = 20.0,
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
        self.model_checks = model_checks or ModelChecks()
        # seconds of card and model fetching per pass: following the chain comes first
        self.check_budget = check_budget
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
        cards = models = 0
        if self.store is not None:
            cards = self.fetch_cards()
            models = self.check_models()
        return RunResult(last, total, reorged, cards, models)

    def record_pass(self, error: str | None) -> None:
        """Note a finished pass (error None) or a failed one, for `health`; best effort."""
        try:
            with self.sessions() as session, session.begin():
                state = self._state(session)
                state.heartbeat_at = time.time() if error is None else state.heartbeat_at
                state.failures = 0 if error is None else (state.failures or 0) + 1
                state.last_error = error
        except Exception:  # the database itself may be what is failing
            log.warning("could not record the indexer's state", exc_info=True)

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
                "args": {
                    k: str(v) if isinstance(v, int) else _storable_text(v)
                    for k, v in e.args.items()
                },
            }
            for e in decoded
        ]
        insert = db.insert(session, ChainEvent)
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
                try:
                    with session.begin_nested():  # one bad event never fails the batch
                        self._apply_listing_event(session, name, row["args"], row["block_number"])
                except Exception:
                    log.exception("model %s: could not apply %s", row["model_id"], name)
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
            listing.model_cid = _storable_text(args["modelCid"])
            listing.metadata_cid = _storable_text(args["metadataCid"])
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
                select(Listing.model_id, Listing.metadata_cid)
                .where(_due(Listing.card_status, Listing.card_retry_at))
                .order_by(Listing.model_id)
            ).all()
        return self._settle_each("card", pending, self._fetch_card, self._store_card, cards.Card)

    def _store_card(self, model_id: int, metadata_cid: str, card: cards.Card) -> None:
        with self.sessions() as session, session.begin():
            listing = session.get(Listing, model_id)
            if listing is None or listing.metadata_cid != metadata_cid:
                return
            listing.card_status, listing.card_error = card.status, card.error
            listing.card, listing.card_flags = card.data, list(card.flags)
            listing.card_attempts, listing.card_retry_at = _retry(
                card.status, listing.card_attempts
            )
            data = card.data or {}
            listing.name = data.get("name")
            listing.description = data.get("description")
            listing.license = data.get("license")
            listing.tags = list(data.get("tags", []))

    def _fetch_card(self, metadata_cid: str) -> cards.Card:
        assert self.store is not None
        pieces: list[bytes] = []
        failed = fetch_verified(
            self.store,
            metadata_cid,
            "card",
            sink=pieces.append,
            max_bytes=self.max_card_bytes,
            timeout=self.card_timeout,
        )
        if failed is not None:
            status, reason = failed
            return cards.Card("invalid_card" if status == "invalid_cid" else status, reason)
        return cards.parse_card(b"".join(pieces))

    # ------------------------------------------------------------------ models

    def _store_verdict(self, model_id: int, model_cid: str, verdict: ModelVerdict) -> None:
        with self.sessions() as session, session.begin():
            listing = session.get(Listing, model_id)
            if listing is None or listing.model_cid != model_cid:
                return
            listing.model_status, listing.model_error = verdict.status, verdict.error
            listing.signature = verdict.signature
            listing.model_bytes, listing.load_bytes = verdict.size, verdict.load_bytes
            listing.model_attempts, listing.model_retry_at = _retry(
                verdict.status, listing.model_attempts
            )

    def check_models(self) -> int:
        """Fetch (verified, size-capped, with a timeout), inspect and load-probe each
        listed model not yet checked; record its status, the reason, and its signature.
        Returns how many were settled. Nothing about one model stops the indexer."""
        assert self.store is not None
        with self.sessions() as session:
            pending = session.execute(
                select(Listing.model_id, Listing.model_cid)
                .where(_due(Listing.model_status, Listing.model_retry_at))
                .order_by(Listing.model_id)
            ).all()
        store = self.store
        return self._settle_each(
            "model",
            pending,
            lambda model_cid: check_model(store, model_cid, self.model_checks),
            self._store_verdict,
            ModelVerdict,
        )

    def _settle_each(
        self,
        what: str,
        pending: Sequence[Any],
        check: Callable[[str], _Outcome],
        record: Callable[[int, str, _Outcome], None],
        outcome: Callable[[str, str], _Outcome],
    ) -> int:
        """Check each (model id, CID) of `pending` and record what was found, within the
        pass's time budget; returns how many were settled. A fault while checking one is
        retried later; a value the database refuses marks its listing `unstorable` (a
        transient database fault fails the pass instead, and is retried)."""
        settled = 0
        deadline = time.monotonic() + self.check_budget
        for model_id, content in pending:
            if time.monotonic() > deadline:
                break
            try:
                found = check(content)
            except Exception:  # a bug or a store fault on one never stops the rest
                log.exception("checking the %s of listing %s failed", what, model_id)
                found = outcome("unavailable", f"checking the {what} failed; it is retried")
            try:
                record(model_id, content, found)
            except DataError as exc:
                log.warning(
                    "model %s: storing its %s failed: %s", model_id, what, type(exc).__name__
                )
                found = outcome("unstorable", f"the database refused the {what}'s details")
                record(model_id, content, found)
            settled += found.status != "unavailable"
        return settled


RETRY_FIRST, RETRY_MAX = 30.0, 3600.0  # seconds: unavailable content, fetched again


def _due(status: Any, retry_at: Any) -> Any:
    """Listings whose card or model is to be fetched now: never tried, or unavailable and
    past its backoff."""
    return or_(
        status == "pending",
        and_(status == "unavailable", or_(retry_at.is_(None), retry_at <= time.time())),
    )


def _retry(status: str, attempts: int | None) -> tuple[int, float | None]:
    """(attempts, next try) after a fetch that ended in `status`."""
    if status != "unavailable":
        return 0, None
    tries = (attempts or 0) + 1
    return tries, time.time() + min(RETRY_FIRST * 2 ** (tries - 1), RETRY_MAX)


def _storable_text(value: Any, limit: int = 128) -> str:
    """A string from the chain (a CID) as the database can hold it. Anyone can list any
    string; one too long or with control characters (PostgreSQL refuses NUL) is kept
    escaped and marked with a leading "!", so it can never pass as a CID."""
    text = str(value)
    if len(text) <= limit and text.isascii() and text.isprintable():
        return text
    return ("!" + text.encode("unicode_escape").decode("ascii"))[:limit]


def follow(
    idx: Indexer,
    stop: threading.Event,
    *,
    interval: float = 1.0,
    max_backoff: float = 60.0,
    on_result: Callable[[RunResult], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> None:
    """Follow the chain until `stop` is set. Never dies: any error is logged, recorded
    where health checks read it (`health`), and retried after a backoff that doubles up
    to `max_backoff` and resets after a good pass."""
    delay = interval
    while not stop.is_set():
        try:
            result = idx.run_once(progress)
        except Exception as exc:
            # Only our own messages are shown (they never quote a URL, key or payload);
            # anything else is logged with its traceback and shown by its type.
            if isinstance(exc, errors.ModelMarketError):
                code, text = exc.code, exc.message
                log.warning("indexer pass failed [%s]: %s; retrying in %.0f s", code, text, delay)
            else:
                code = text = type(exc).__name__
                log.exception("indexer pass failed; retrying in %.0f s", delay)
            idx.record_pass(code)
            if on_error is not None:
                on_error(f"{text} [{code}] (retrying in {delay:.0f} s)")
            stop.wait(delay)
            delay = min(delay * 2, max_backoff)
            continue
        delay = interval
        idx.record_pass(None)
        if on_result is not None:
            on_result(result)
        stop.wait(interval)


def health(session: Session, deployment: chain.Deployment) -> dict[str, Any]:
    """How the indexer of `deployment` is doing, from what it recorded (any process)."""
    state = session.get(IndexerState, Web3.to_checksum_address(deployment.marketplace))
    if state is None:
        return {"status": "not_started"}
    age = None if state.heartbeat_at is None else round(time.time() - state.heartbeat_at, 1)
    return {
        "status": "failing" if state.failures else "ok",
        "last_block": state.last_block,
        "seconds_since_pass": age,
        "failures": state.failures,
        "last_error": state.last_error,  # a stable code, never a message
    }


@dataclass(frozen=True)
class ModelChecks:
    """Bounds on checking one listed model at indexing."""

    max_bytes: int = 1 << 30
    fetch_timeout: float = 60.0
    load_memory_bytes: int = 2 << 30
    load_timeout: float = 30.0
    limits: Limits = field(default_factory=Limits)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)  # the gateway's


@dataclass(frozen=True)
class ModelVerdict:
    """What checking a listed model found: "ok" with its signature, or why not."""

    status: str
    error: str | None = None
    signature: dict[str, Any] | None = None
    size: int | None = None
    load_bytes: int | None = None

    def __post_init__(self) -> None:
        # Refusals quote names from the model file: untrusted, unbounded text.
        if self.error is not None:
            object.__setattr__(self, "error", cards.printable(self.error))


def fetch_verified(
    store: ContentStore,
    content: str,
    what: str,
    *,
    sink: Callable[[bytes], object],
    max_bytes: int,
    timeout: float,
) -> tuple[str, str] | None:
    """Stream `content` into `sink`, every byte verified against its CID and at most
    `max_bytes`; None when it all arrived, else (status, reason) for the listing."""
    try:
        cid.verify(store.cat(content, timeout=timeout), content, sink=sink, max_bytes=max_bytes)
    except ContentTooLarge:
        return "too_large", f"the {what} is over {max_bytes} bytes"
    except ContentMismatch as exc:
        return "cid_mismatch", exc.message
    except StorageError as exc:
        if exc.code == "invalid_cid":
            return "invalid_cid", exc.message
        # the store's own message may name internal addresses: its code only
        return "unavailable", f"the {what} could not be fetched ({exc.code})"
    return None


def check_model(store: ContentStore, model_cid: str, checks: ModelChecks) -> ModelVerdict:
    """Fetch `model_cid` (every byte verified, at most `checks.max_bytes`), inspect it,
    and load it once in a bounded child process."""
    with tempfile.TemporaryFile() as tmp:
        failed = fetch_verified(
            store,
            model_cid,
            "model",
            sink=tmp.write,
            max_bytes=checks.max_bytes,
            timeout=checks.fetch_timeout,
        )
        if failed is not None:
            return ModelVerdict(*failed)
        tmp.seek(0)
        data = tmp.read()
    try:
        info = inspect_bytes(data, checks.limits)
        report = probe_load(
            data,
            memory_bytes=checks.load_memory_bytes,
            timeout=checks.load_timeout,
            runtime=checks.runtime,
        )
    except InvalidModel as exc:  # the model's fault: recorded, never offered
        return ModelVerdict(exc.code, exc.message, size=len(data))
    except InferenceError as exc:  # ours (the probe did not start): checked again later
        return ModelVerdict("unavailable", exc.message, size=len(data))
    return ModelVerdict("ok", None, info.to_dict(), size=len(data), load_bytes=report.peak_bytes)
