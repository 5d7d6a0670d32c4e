"""How a paid call is paid for, as snet-daemon's PaymentHandler does it: begin (take the
money) -> run -> complete, or complete after error (give it back). Prepaid credits are
the first method; vouchers, x402 or free trials would be new classes of this shape.

Prepaid credits are spent from leases so that a paid call costs no database round trip:
a worker takes a block of a (buyer, model) credit's calls in one conditional UPDATE
(`ledger.lease`; 16 calls at first, doubling while a lease lasts under LEASE_SECONDS,
up to `lease_size`), spends them in memory, takes the next lease in the background
before the open one runs dry, and writes the finished calls' usage rows every
FLUSH_INTERVAL (`ledger.record_calls`, `ledger.sync`). A lease goes back
(`ledger.settle`: its unspent calls return to the credit, once) when it runs dry, sits
idle, is recalled by a worker that found the credit empty, or the worker stops; never
while one of its calls runs. A worker that dies without settling is swept by the others
after `ttl`; a call is never served from a lease its holder has not kept alive within
ttl/2, so a swept lease is never spent.

What it costs: a hard crash of a worker (SIGKILL, power) gives back the calls it served
in its last FLUSH_INTERVAL, because they were not written yet; other workers may show a
few calls' stale X-Credits-Remaining; and the last calls of a credit pay the round trip
(leases shrink to single calls near the end, so no worker holds calls another needs).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine

from marketplace import errors, ledger
from marketplace.models import ApiKey, Listing

AcceptsFn = Callable[[Listing], list[dict[str, object]]]
FLUSH_INTERVAL = 0.1  # seconds between writes of finished calls
MIN_LEASE = 16  # a credit's first lease; busy credits' leases double up to lease_size
LEASE_SECONDS = 1.0  # a busy credit's lease should last about this long
IDLE_SECONDS = 2.0  # a lease unused this long goes back
RECALL_WAIT = 1.5  # how long a worker that found the credit empty waits for recalled calls

log = logging.getLogger("modelmarket")


@dataclass(eq=False)
class _Lease:
    id: str
    buyer: str
    model_id: int
    granted: int
    left: int  # calls not handed out yet
    alive_at: float  # monotonic time the database last confirmed the lease open
    last_used: float
    taken: float = field(default_factory=time.monotonic)
    in_flight: int = 0  # calls handed out and not finished
    closed: bool = False  # no longer spent from; settled once nothing is in flight


@dataclass(eq=False)
class Payment:
    """One begun payment."""

    inference_id: str
    key_id: str
    lease: _Lease
    remaining: int
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    done: bool = False

    @property
    def buyer(self) -> str:
        return self.lease.buyer

    @property
    def model_id(self) -> int:
        return self.lease.model_id

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class PrepaidCredits:
    """Calls bought on-chain in advance; one credit per call, spent from leases."""

    name = "prepaid"

    def __init__(
        self, engine: Engine, accepts: AcceptsFn, *, lease_size: int = 4096, ttl: float = 30.0
    ) -> None:
        self.engine = engine
        self.accepts = accepts
        self.lease_size = lease_size
        self.ttl = ttl
        self._pid = -1
        self._start_lock = threading.Lock()
        self._next_sweep = 0.0
        atexit.register(self.close)

    def _start(self) -> None:
        # Per process (gunicorn may build the app before forking its workers), once:
        # two sets of locks over the same leases would spend a call twice.
        with self._start_lock:
            if self._pid != os.getpid():
                self._start_here()

    def _start_here(self) -> None:
        pid = os.getpid()
        self.holder = f"{socket.gethostname()[:40]}:{pid}:{secrets.token_hex(4)}"
        self._id_prefix = secrets.token_hex(10)
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._refill_locks: dict[tuple[str, int], threading.Lock] = {}
        self._open: dict[tuple[str, int], _Lease] = {}
        # the next lease of a busy credit, taken in the background before the open one
        # runs dry, so that a paid call does not wait for the database
        self._standby: dict[tuple[str, int], _Lease] = {}
        self._wanted: set[tuple[str, int]] = set()
        self._want: dict[tuple[str, int], int] = {}  # the next lease's size, per credit
        self._outside: dict[tuple[str, int], int] = {}  # calls left outside leases, last seen
        self._wake = threading.Event()
        self._closing: list[_Lease] = []
        self._done: list[tuple[Any, ...]] = []
        self._stop = threading.Event()
        # inference ids: unique, not secret (usage is only shown to the key's owner);
        # os.urandom per call cost as much as the rest of the payment. next() on a
        # count is atomic, so ids are made outside the lock.
        self._ids = itertools.count()
        self._pid = pid  # after the state: other threads wait on _start_lock until now
        self._thread = threading.Thread(target=self._run, name="credit-leases", daemon=True)
        self._thread.start()

    def begin(self, key: ApiKey, listing: Listing) -> Payment:
        """Take one call; PaymentRequired with how to pay when none is left."""
        if self._pid != os.getpid():
            self._start()
        credit = (key.address, listing.model_id)
        now = time.monotonic()
        with self._lock:  # as short as it can be: every paid call of the worker takes it
            taken = self._spend(credit, now)
        if taken is None:
            with self._refill_lock(credit):
                taken = self._lease_and_spend(credit, listing)
        return Payment(f"{self._id_prefix}{next(self._ids):012x}", key.id, *taken)

    def _refill_lock(self, credit: tuple[str, int]) -> threading.Lock:
        """One lease taken at a time per credit and worker (a call that finds the lease
        dry waits for the standby being taken rather than taking another)."""
        with self._lock:
            return self._refill_locks.setdefault(credit, threading.Lock())

    def _usable(self, lease: _Lease | None, now: float) -> bool:
        return (
            lease is not None
            and not lease.closed
            and lease.left > 0
            and now - lease.alive_at < self.ttl / 2  # might be swept: never spend it
        )

    def _spend(self, credit: tuple[str, int], now: float) -> tuple[_Lease, int] | None:
        """Hand out one call of the open lease (or of the standby one): the lease and the
        calls left after it. Holds self._lock."""
        lease = self._open.get(credit)
        if not self._usable(lease, now):
            standby = self._standby.pop(credit, None)
            if standby is None or not self._usable(standby, now):
                self._retire(standby)
                return None
            if lease is not None:
                self._resize(credit, lease, now)
            self._retire(lease)
            self._open[credit] = lease = standby
        assert lease is not None
        lease.left -= 1
        lease.in_flight += 1
        lease.last_used = now
        wanted = credit not in self._standby and credit not in self._wanted
        if wanted and lease.left * 2 < lease.granted:  # half the lease of runway
            self._wanted.add(credit)
            self._wake.set()
        return lease, self._remaining(credit)

    def _size(self, credit: tuple[str, int]) -> int:
        """How many calls the next lease of `credit` asks for."""
        return self._want.get(credit, min(MIN_LEASE, self.lease_size))

    def _resize(self, credit: tuple[str, int], spent: _Lease, now: float) -> None:
        """Size the next lease so that a busy credit's lease lasts about LEASE_SECONDS:
        few database round trips at any rate, small leases for slow buyers. Holds
        self._lock."""
        want = self._size(credit)
        lasted = now - spent.taken
        if spent.left <= 0 and lasted < LEASE_SECONDS:
            want = min(want * 2, self.lease_size)
        elif lasted > 10 * LEASE_SECONDS:
            want = max(want // 2, min(MIN_LEASE, self.lease_size))
        self._want[credit] = want

    def _remaining(self, credit: tuple[str, int]) -> int:
        """Calls left as this worker knows them (another worker's recent calls show up
        when this one next takes a lease). Holds self._lock."""
        held = (self._open.get(credit), self._standby.get(credit), *self._closing)
        leased = sum(
            lease.left for lease in held if lease and (lease.buyer, lease.model_id) == credit
        )
        return leased + self._outside.get(credit, 0)

    def _lease_and_spend(self, credit: tuple[str, int], listing: Listing) -> tuple[_Lease, int]:
        deadline = time.monotonic() + RECALL_WAIT
        retried_empty = False
        while True:
            with self._lock:
                taken = self._spend(credit, time.monotonic())
            if taken is not None:
                return taken
            with self.engine.begin() as conn:
                got = self._take_lease(conn, credit)
                elsewhere = 0 if got else ledger.recall(conn, *credit, holder=self.holder)
            if got is not None:
                lease, outside = got
                with self._lock:
                    old = self._open.get(credit)
                    if old is not None:
                        self._resize(credit, old, lease.taken)
                    self._retire(old)
                    self._open[credit] = lease
                    self._outside[credit] = outside
                continue
            # Nothing held elsewhere either, but a lease settled while this transaction
            # ran (PostgreSQL: the recall waited for its row lock) is only visible to
            # the next one: 402 only after an empty try that began after that.
            if not elsewhere and not retried_empty:
                retried_empty = True
                continue
            if not elsewhere or time.monotonic() > deadline:
                if not listing.active:
                    raise errors.PaymentRequired(
                        f"no calls left on model {listing.model_id}, and it is delisted:"
                        " no more can be bought",
                        [],
                    )
                raise errors.PaymentRequired(
                    f"no calls left on model {listing.model_id}: buy calls on-chain"
                    f" (POST /api/v1/models/{listing.model_id}/purchase gives the approve and"
                    " purchase transactions), then POST the transaction hash to"
                    " /api/v1/receipts",
                    self.accepts(listing),
                )
            time.sleep(FLUSH_INTERVAL / 4)  # other workers are giving their calls back

    def _take_lease(self, conn: Connection, credit: tuple[str, int]) -> tuple[_Lease, int] | None:
        """A new lease of `credit` and the calls left outside leases, or None."""
        lease_id = secrets.token_hex(16)
        got = ledger.lease(
            conn,
            lease_id=lease_id,
            holder=self.holder,
            buyer=credit[0],
            model_id=credit[1],
            want=self._size(credit),
            now=time.time(),
        )
        if got is None:
            return None
        now = time.monotonic()
        return _Lease(lease_id, credit[0], credit[1], got[0], got[0], now, now, taken=now), got[1]

    def _retire(self, lease: _Lease | None) -> None:
        """Stop spending `lease`; the next flush settles it. Holds self._lock."""
        if lease is not None and not lease.closed:
            lease.closed = True
            self._closing.append(lease)
            credit = (lease.buyer, lease.model_id)
            if self._open.get(credit) is lease:
                del self._open[credit]
            if self._standby.get(credit) is lease:
                del self._standby[credit]

    def complete(self, payment: Payment) -> None:
        """The call was served: the call is spent (written in the next flush)."""
        self._finish(payment, "ok", None)

    def complete_after_error(self, payment: Payment, code: str) -> int:
        """The call failed: give it back (once). Returns the calls left."""
        self._finish(payment, "failed", code)
        with self._lock:
            return self._remaining((payment.buyer, payment.model_id))

    def _finish(self, payment: Payment, status: str, error: str | None) -> None:
        refunded = status != "ok"
        lease = payment.lease
        row = (  # ledger.USAGE_COLUMNS, built before taking the lock
            payment.inference_id,
            payment.key_id,
            lease.buyer,
            lease.model_id,
            status,
            lease.id,
            error[:64] if error else None,
            payment.elapsed_ms,
            True,
            refunded,
            payment.created_at,
        )
        with self._lock:
            if payment.done:
                return
            payment.done = True
            lease.in_flight -= 1
            if refunded:  # a closed lease's settle gives it back to the credit
                lease.left += 1
            self._done.append(row)

    def flush(self) -> None:
        """Write finished calls, settle leases that are done, keep the rest alive, and
        now and then sweep leases whose holder went silent."""
        if self._pid != os.getpid():  # nothing begun in this process: only the sweep
            self._sweep(time.monotonic())
            return
        with self._tick_lock:
            self._flush()

    def _sweep(self, started: float) -> None:
        """Settle other workers' leases not heard from for the TTL (a crashed worker's),
        every TTL/3."""
        if started < self._next_sweep:
            return
        now = time.time()
        with self.engine.begin() as conn:  # its own transaction: other holders' rows
            for lease_id in ledger.stale_leases(conn, now - self.ttl):
                ledger.settle(conn, lease_id, now)
        self._next_sweep = started + self.ttl / 3

    def _flush(self) -> None:
        started = time.monotonic()
        with self._lock:
            done, self._done = self._done, []
            for credit, lease in list(self._open.items()):
                idle = started - lease.last_used > IDLE_SECONDS
                if idle or lease.left <= 0:
                    self._resize(credit, lease, started)
                    self._retire(lease)
                    standby = self._standby.pop(credit, None)
                    if standby is not None and not idle:
                        self._open[credit] = standby
            for credit, lease in list(self._standby.items()):
                if credit not in self._open:  # its credit went idle
                    self._retire(lease)
            # Settling gives back what is not counted as used: a call still running
            # would be given back and served too. Wait for it.
            closing = [lease for lease in self._closing if lease.in_flight == 0]
            open_now = [*self._open.values(), *self._standby.values()]
            alive = [lease.id for lease in open_now]
        if not (done or closing or alive):
            self._sweep(started)
            return  # idle: no write lock taken
        now = time.time()
        try:
            with self.engine.begin() as conn:
                touched = {c[ledger.LEASE_ID] for c in done} | {lease.id for lease in closing}
                ledger.lock_leases(conn, sorted(touched | set(alive)))
                ledger.record_calls(conn, done, now)
                synced = ledger.sync(conn, alive, now)
                returned = {
                    lease.id: ledger.settle(conn, lease.id, now)
                    for lease in sorted(closing, key=lambda lease: lease.id)
                }
        except Exception:
            with self._lock:  # keep them for the next round (record_calls is idempotent)
                self._done = done + self._done
            raise
        with self._lock:
            self._closing = [lease for lease in self._closing if lease not in closing]
            for lease in closing:
                credit = (lease.buyer, lease.model_id)
                self._outside[credit] = self._outside.get(credit, 0) + returned[lease.id]
            for lease in open_now:
                if lease.closed:
                    continue
                if lease.id not in synced:  # swept or settled elsewhere
                    self._retire(lease)
                    self._closing.remove(lease)
                elif synced[lease.id]:  # recalled
                    self._retire(lease)
                else:
                    lease.alive_at = started
        self._sweep(started)

    def _prefetch(self) -> None:
        """Take the standby leases that busy credits asked for."""
        with self._lock:
            wanted, self._wanted = self._wanted, set()
        for credit in sorted(wanted):
            with self._refill_lock(credit):
                self._take_standby(credit)

    def _take_standby(self, credit: tuple[str, int]) -> None:
        if credit not in self._open or credit in self._standby:
            return  # went idle, or a call took the next lease meanwhile
        with self.engine.begin() as conn:
            got = self._take_lease(conn, credit)
        if got is None:
            return  # nothing left outside leases: the open lease's calls are the last
        lease, outside = got
        with self._lock:
            self._outside[credit] = outside
            if credit in self._open and credit not in self._standby:
                self._standby[credit] = lease
            else:  # the credit went idle meanwhile
                lease.closed = True
                self._closing.append(lease)

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._prefetch()
                self.flush()
            except Exception:  # the next round retries; never kill the thread
                log.exception("writing paid calls failed")

    def close(self) -> None:
        """Write everything and give every lease back (the worker is stopping)."""
        atexit.unregister(self.close)
        if self._pid != os.getpid() or self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        with self._lock:
            for lease in [*self._open.values(), *self._standby.values()]:
                self._retire(lease)
        try:
            self.flush()
        except Exception:  # the sweep of another worker gives them back after the TTL
            log.exception("giving leased calls back failed")
