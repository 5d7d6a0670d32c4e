"""The audit trail's three parts: the issuer that makes each served call's receipt (on
the request thread: a sequence number from this worker's block, the digests, no
signature); the builder that closes a batch every period (or at its size) and fixes
its Merkle root, in the leading indexer (`BatchBuilder`) or, with no indexer running, in
one gateway worker; and the anchorer that, in each worker's background thread, anchors
the built roots from the gateway's address, finishing whatever a crash left first."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine

from marketplace import errors
from marketplace.chain.anchors import Anchors
from marketplace.usage import batches, sends
from marketplace.usage.receipts import Domain, Receipt
from storage import cid

log = logging.getLogger("modelmarket.audit")

SEQUENCE_BLOCK = 4096  # sequence numbers a worker takes at once (one write per block)


class ReceiptIssuer:
    """Makes the receipts of one gateway identity's served calls."""

    def __init__(self, engine: Engine, gateway: str, domain: Domain) -> None:
        self.engine = engine
        self.gateway = gateway.lower()
        self.domain = domain
        self._lock = threading.Lock()
        self._pid = -1
        self._numbers: range = range(0)
        self._next = 0
        self._spare: range | None = None  # the next block, taken before this one runs out
        self._fetching = False

    def sequence(self) -> int:
        """This worker's next sequence number. The next block is taken in the background
        when three quarters of this one are used: taking it on the request thread held
        every other request of the worker on the lock meanwhile (a database write, which
        on SQLite may wait for the usage writer; 7% of a worker's samples under load)."""
        with self._lock:
            if self._pid != os.getpid():  # forked: blocks are per process
                self._numbers, self._next, self._spare, self._pid = range(0), 0, None, os.getpid()
                self._fetching = False
            if self._next >= len(self._numbers):
                if self._spare is not None:
                    self._numbers, self._spare = self._spare, None
                else:  # the first block, or the background fetch fell behind
                    self._numbers = batches.reserve_sequences(
                        self.engine, self.gateway, SEQUENCE_BLOCK, self.domain
                    )
                self._next = 0
            number = self._numbers[self._next]
            self._next += 1
            if (
                self._spare is None
                and not self._fetching
                and 4 * self._next >= 3 * len(self._numbers)
            ):
                self._fetching = True
                threading.Thread(
                    target=self._fetch_spare, name="receipt-sequence", daemon=True
                ).start()
        return number

    def _fetch_spare(self) -> None:
        try:
            spare = batches.reserve_sequences(
                self.engine, self.gateway, SEQUENCE_BLOCK, self.domain
            )
            with self._lock:
                self._spare = spare
        except Exception:  # the request thread takes one itself when this one runs out
            log.warning("could not take the next block of receipt sequence numbers", exc_info=True)
        finally:
            self._fetching = False

    def issue(
        self,
        inference_id: str,
        model_id: int,
        model_cid: str,
        buyer: str,
        price: int,
        method: str,
        when: float,
        digests: tuple[bytes, bytes],
    ) -> Receipt:
        """The receipt of one served call."""
        return Receipt(
            self.gateway,
            inference_id,
            self.sequence(),
            model_id,
            _model_digest(model_cid),
            "0x" + digests[0].hex(),
            "0x" + digests[1].hex(),
            buyer,
            price,
            method,
            int(when),
        )


@functools.lru_cache(maxsize=4096)
def _model_digest(model_cid: str) -> str:
    return "0x" + cid.digest(model_cid).hex()


def build_due(
    engine: Engine,
    gateway: str,
    domain: Domain,
    *,
    holder: str,
    ttl: float,
    period: float,
    max_calls: int,
    now: float,
    preempt: bool = False,
) -> int:
    """Build `gateway`'s batches that are due at `now` (a full one, or one whose oldest
    receipt has waited `period`) while `holder` has the building turn (taken, or renewed,
    for `ttl` seconds, before each batch: a worker whose turn the indexer took stops
    after the batch in hand; `preempt`: see `batches.claim_building`). How many it
    built. A build that fails gives the turn up, so another process may try."""
    built = 0
    try:
        while batches.claim_building(engine, gateway, holder, time.time(), ttl, preempt=preempt):
            # closed and never hashed (a builder stopped between the two): due whatever
            # else waits, or they would wait for the next batch to fall due
            built += batches.build_closed(engine, gateway, domain)
            waiting, oldest = batches.unbatched(engine, gateway, max_calls)
            if not waiting or (
                waiting < max_calls and oldest is not None and oldest > now - period
            ):
                break
            closed = batches.close_open(engine, gateway, max_calls, now)
            if not closed:
                break
            built += batches.build_closed(engine, gateway, domain)
            for batch in closed:
                log.info("built receipt batch %s for gateway %s", batch, gateway)
    except Exception:
        # the turn given up, unless the database itself failed (then it lapses after ttl):
        # the build's own error is the one to raise
        with contextlib.suppress(Exception):
            batches.release_building(engine, holder)
        raise
    return built


class BatchBuilder:
    """Builds every gateway's due batches from the leading indexer (`modelmarket
    indexer`, or the one `modelmarket run` holds), so the serving workers spend none of
    their GIL on Merkle trees (~10 us a receipt) and only send the roots built for them,
    from their key. Each gateway's receipts are hashed under the domain the gateway
    recorded (`batches.reserve_sequences`). Its turn preempts a worker's at its next
    run; if the indexer stops (`close`), or its turn lapses after `ttl` (it died, or a
    pass ran longer), the gateway's workers build their own again."""

    def __init__(self, engine: Engine, *, period: float, max_calls: int, ttl: float = 30.0) -> None:
        self.engine = engine
        self.period = period
        self.max_calls = max_calls
        self.ttl = ttl
        self.holder = f"{batches.INDEXER_BUILDER}{socket.gethostname()[:40]}:{os.getpid()}"

    def run_once(self, now: float | None = None) -> int:
        """Build what is due for every gateway; how many batches it built."""
        now = time.time() if now is None else now
        return sum(
            build_due(
                self.engine,
                gateway,
                domain,
                holder=self.holder,
                ttl=self.ttl,
                period=self.period,
                max_calls=self.max_calls,
                now=now,
                preempt=True,
            )
            for gateway, domain in batches.issuers(self.engine)
        )

    def close(self) -> None:
        """Give up this builder's turns (the indexer stops or stands down): the workers, or
        the next leader, build at once instead of after `ttl`."""
        batches.release_building(self.engine, self.holder)


class Anchorer:
    """Anchors one gateway's batches, from each worker (a batch is closed and built by
    the leading indexer's `BatchBuilder` or, without one, by one of the gateway's
    workers; it is sent by the worker that claimed it)."""

    def __init__(
        self,
        engine: Engine,
        anchors: Callable[[], Anchors | None],
        domain: Callable[[], Domain],
        *,
        period: float,
        max_calls: int,
        stale_after: float,
    ) -> None:
        self.engine = engine
        self.anchors = anchors
        self.domain = domain
        self.period = period
        self.max_calls = max_calls
        self.stale_after = stale_after
        self.failing_since: float | None = None
        self._pid = -1
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: float | None = None) -> int:
        """One round: close the batches that are due (if no indexer has the building
        turn), then anchor every built batch not on-chain yet. Returns how many batches
        this round anchored (or found anchored)."""
        anchors = self.anchors()
        if anchors is None or anchors.signer is None:
            return 0
        gateway = anchors.signer.address.lower()
        now = time.time() if now is None else now
        domain = self.domain()
        build_due(
            self.engine,
            gateway,
            domain,
            holder=f"{batches.WORKER_BUILDER}{socket.gethostname()[:40]}:{os.getpid()}",
            ttl=3 * self.tick + 5,  # a dead builder hands over after this
            period=self.period,
            max_calls=self.max_calls,
            now=now,
        )
        done = 0
        for batch in sends.unsent(self.engine, gateway):
            claimed = time.time()
            if not sends.claim(self.engine, batch.id, claimed, self.stale_after):
                continue
            root = bytes.fromhex(batch.root[2:])
            try:
                done += self._anchor(anchors, gateway, batch.id, root, batch.receipts)
            except errors.TransactionTimeout:
                # sent, not mined yet: keep the claim (no second transaction meanwhile);
                # once it is stale, the next round finds the root on-chain or sends again
                raise
            except Exception:
                sends.release(self.engine, batch.id, claimed)
                raise
        return done

    def _anchor(self, anchors: Anchors, gateway: str, batch: int, root: bytes, count: int) -> int:
        held = anchors.anchor_of(gateway, root)
        if held.block_number == 0:  # not on-chain: send it (a crash after sending, before
            try:  # recording, leaves it on-chain and found here next time)
                tx_hash, block = anchors.anchor(batch, root, count)
            except errors.ContractRevert as exc:
                if exc.revert_name != "AlreadyAnchored":
                    raise
                held = anchors.anchor_of(gateway, root)  # a twin's send won
            else:
                sends.anchored(self.engine, batch, tx_hash, block, time.time())
                log.info("anchored batch %s: %s receipts, tx %s", batch, count, tx_hash)
                return 1
        tx = anchors.anchored_tx(gateway, root, held.block_number)
        sends.anchored(self.engine, batch, tx, held.block_number, time.time())
        log.info("batch %s was on-chain already (block %s)", batch, held.block_number)
        return 1

    # -------------------------------------------------------------- the thread

    @property
    def tick(self) -> float:
        """Seconds between rounds: a due batch waits at most this beyond its period."""
        return max(0.1, min(2.0, self.period / 4))

    def start(self) -> None:
        """Run rounds in this process's background thread (once per process)."""
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, name="anchorer", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def stop(self) -> None:
        """Stop the thread (at the end of its round)."""
        self._stop.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout=10)
        self._pid = -1

    def alive(self) -> bool:
        """Whether this process's thread runs."""
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.run_once()
                self.failing_since = None
            except Exception as exc:
                if self.failing_since is None:
                    self.failing_since = time.time()
                    log.warning("anchoring failed (will retry): %s", exc, exc_info=True)
