"""Chain events into the database: listings, prices, purchases (credited through the
ledger), applied only after N confirmations, undone and re-applied on a reorg; then the
content behind new listings checked.

Idempotent and safe to run twice at once: each event is unique by (tx hash, log index),
and each batch runs under a lock (a PostgreSQL advisory lock; SQLite's write lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hexbytes import HexBytes
from sqlalchemy import delete, text
from sqlalchemy.orm import Session, sessionmaker
from web3 import Web3
from web3.exceptions import BlockNotFound

from marketplace import errors
from marketplace.chain.artifacts import Deployment, load_artifact
from marketplace.chain.logs import EventDecoder
from marketplace.chain.transactions import rpc_errors
from marketplace.db.tables import BlockHash, IndexerState
from marketplace.indexer import content, reorgs
from marketplace.indexer.apply import apply_all
from marketplace.indexer.content import ContentChecks
from marketplace.indexer.leader import Leadership

LOCK_KEY = 0x6D6D6B7431  # "mmkt1": the advisory lock every indexer takes

log = logging.getLogger("modelmarket.indexer")


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
        deployment: Deployment,
        artifacts_dir: Any,
        *,
        confirmations: int = 2,
        batch_blocks: int = 2000,
        reorg_depth: int = 64,
        content: ContentChecks | None = None,
    ) -> None:
        self.sessions = sessions
        self.w3 = w3
        self.deployment = deployment
        abi = load_artifact(artifacts_dir, "ModelMarketplace").abi
        self.address = Web3.to_checksum_address(deployment.marketplace)
        self.confirmations = confirmations
        self.batch_blocks = batch_blocks
        self.reorg_depth = reorg_depth
        self.content = content  # None: listings' cards and models are not checked
        self.events = EventDecoder(abi, self.address)

    def run_once(self, progress: Callable[[Progress], None] | None = None) -> RunResult:
        """Catch up to `head - confirmations`, handling a reorg first if one happened."""
        with rpc_errors():
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
        if self.content is not None:
            cards = content.fetch_cards(self.sessions, self.content)
            models = content.check_models(self.sessions, self.content)
        return RunResult(last, total, reorged, cards, models)

    def record_pass(self, error: str | None, leader: str | None = None) -> None:
        """Note a finished pass (error None) or a failed one, for `health`, and which
        process made it; best effort."""
        try:
            with self.sessions() as session, session.begin():
                state = self._state(session)
                if leader is not None:
                    state.leader = leader
                state.heartbeat_at = time.time() if error is None else state.heartbeat_at
                state.failures = 0 if error is None else (state.failures or 0) + 1
                state.last_error = error
        except Exception:  # the database itself may be what is failing
            log.warning("could not record the indexer's state", exc_info=True)

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
        with rpc_errors():
            try:
                return HexBytes(self.w3.eth.get_block(number)["hash"]).to_0x_hex()
            except BlockNotFound:
                return ""

    def _check_reorg(self) -> int | None:
        """If a stored block hash is no longer canonical, undo everything above the last
        block that still is. Returns the fork block, or None."""
        with self.sessions() as session, session.begin():
            self._lock(session)
            fork = reorgs.find_fork(session, self._block_hash)
            if fork is not None:
                reorgs.roll_back(session, fork)
                self._state(session).last_block = fork
            return fork

    def _index_range(self, start: int, end: int) -> int:
        with rpc_errors():
            logs = self.w3.eth.get_logs(
                {"address": self.address, "fromBlock": start, "toBlock": end}
            )
            known = {
                n: self._block_hash(n)
                for n in sorted(reorgs.checkpoints(start, end, self.reorg_depth))
            }
        decoded = self.events.decode(logs)
        with self.sessions() as session, session.begin():
            self._lock(session)
            state = self._state(session)
            if state.last_block >= end:  # another indexer got here first
                return 0
            applied = apply_all(session, decoded)
            hashes: dict[int, str] = dict(known)
            for event in decoded:
                hashes[event.block_number] = event.block_hash
            for number, block_hash in hashes.items():
                session.merge(BlockHash(number=number, hash=block_hash))
            session.execute(delete(BlockHash).where(BlockHash.number <= end - self.reorg_depth))
            state.last_block = end
        return applied


def follow(
    idx: Indexer,
    stop: threading.Event,
    *,
    interval: float = 1.0,
    max_backoff: float = 60.0,
    on_result: Callable[[RunResult], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
    leadership: Leadership | None = None,
    on_role: Callable[[str], None] | None = None,
    jobs: Sequence[Callable[[], object]] = (),
) -> None:
    """Follow the chain until `stop` is set. Never dies: any error is logged, recorded
    where health checks read it (`health`), and retried after a backoff that doubles up
    to `max_backoff` and resets after a good pass. With `leadership`, only while this
    process leads; a standby polls for the lead every `interval` (`on_role` hears
    "leader" and "standby" as they change). `jobs` run after each good pass, by the
    leader alone (the receipt batch builder); one that fails is logged and run again
    at the next pass, and fails no pass."""
    try:
        _follow(
            idx,
            stop,
            interval,
            max_backoff,
            on_result,
            on_error,
            progress,
            leadership,
            on_role,
            jobs,
        )
    finally:
        if leadership is not None:
            leadership.release()


def _follow(
    idx: Indexer,
    stop: threading.Event,
    interval: float,
    max_backoff: float,
    on_result: Callable[[RunResult], None] | None,
    on_error: Callable[[str], None] | None,
    progress: Callable[[Progress], None] | None,
    leadership: Leadership | None,
    on_role: Callable[[str], None] | None,
    jobs: Sequence[Callable[[], object]],
) -> None:
    delay = interval
    role = ""
    failing: set[int] = set()  # the jobs whose last run failed (logged once a streak)
    while not stop.is_set():
        try:
            leads = leadership is None or leadership.ensure()
        except Exception:  # the database is down: try again, as a pass would
            log.warning("could not ask for the indexer leadership", exc_info=True)
            leads = False
        now = "leader" if leads else "standby"
        if now != role:
            role = now
            if on_role is not None:
                on_role(role)
        if not leads:
            stop.wait(interval)
            continue
        try:
            result = idx.run_once(progress)
        except Exception as exc:
            # Only our own messages are shown (they never quote a URL, key or payload);
            # anything else is logged with its traceback and shown by its type.
            if isinstance(exc, errors.ModelMarketError):
                code, message = exc.code, exc.message
                log.warning(
                    "indexer pass failed [%s]: %s; retrying in %.0f s", code, message, delay
                )
            else:
                code = message = type(exc).__name__
                log.exception("indexer pass failed; retrying in %.0f s", delay)
            idx.record_pass(code)
            if on_error is not None:
                on_error(f"{message} [{code}] (retrying in {delay:.0f} s)")
            stop.wait(delay)
            delay = min(delay * 2, max_backoff)
            continue
        delay = interval
        idx.record_pass(None, leadership.holder if leadership is not None else None)
        if on_result is not None:
            on_result(result)
        for number, job in enumerate(jobs):
            try:
                job()
            except Exception:
                if number not in failing:
                    log.warning("an indexer job failed (will retry)", exc_info=True)
                failing.add(number)
            else:
                failing.discard(number)
        stop.wait(interval)


def health(session: Session, deployment: Deployment) -> dict[str, Any]:
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
        "leader": state.leader,  # host:pid of the process that made the last pass
    }
