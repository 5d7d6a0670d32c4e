"""The in-memory lease pool of one worker: the calls it holds for each (buyer, model)
credit, handed out one per paid call without a database round trip, and the finished
calls waiting to be written. Pure: no database, no thread; the method takes leases into
it and the keeper writes what it hands back. The paid path holds the pool's lock for a
few dictionary operations at most (every paid call of the worker takes it); only the
credits read (`unwritten`) scans the calls not written yet, at most FLUSH_INTERVAL's.

A credit has an open lease (spent from) and at most one standby lease (taken in the
background before the open one runs dry, so that a paid call does not wait for the
database). A retired lease is no longer spent from and is settled by the keeper once
none of its calls is running.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from marketplace.usage.records import UsageRecord

CreditKey = tuple[str, int]  # (buyer, model id)
MIN_LEASE = 16  # a credit's first lease; busy credits' leases double up to lease_size
LEASE_SECONDS = 1.0  # a busy credit's lease should last about this long
IDLE_SECONDS = 2.0  # a lease unused this long goes back


@dataclass(eq=False)
class Lease:
    """A block of one credit's calls held by this worker."""

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

    @property
    def credit(self) -> CreditKey:
        return (self.buyer, self.model_id)


class Call(Protocol):
    """A call handed out by `spend`, as the pool sees it: finished once."""

    done: bool


@dataclass
class FlushPlan:
    """What the keeper writes in one round, taken from the pool under its lock."""

    done: list[UsageRecord]  # finished calls
    closing: list[Lease]  # retired leases with no call running: settle them
    open_now: list[Lease]  # leases still spent from: keep them alive

    @property
    def empty(self) -> bool:
        return not (self.done or self.closing or self.open_now)


class LeasePool:
    """The leases one worker holds and the calls it has finished."""

    def __init__(self, lease_size: int, ttl: float) -> None:
        self.lease_size = lease_size
        self.ttl = ttl
        self.lock = threading.Lock()
        self._refill_locks: dict[CreditKey, threading.Lock] = {}
        self._open: dict[CreditKey, Lease] = {}
        self._standby: dict[CreditKey, Lease] = {}
        self._wanted: set[CreditKey] = set()  # credits whose standby lease is to be taken
        self._want: dict[CreditKey, int] = {}  # the next lease's size, per credit
        self._outside: dict[CreditKey, int] = {}  # calls left outside leases, last seen
        self._closing: list[Lease] = []
        self._done: list[UsageRecord] = []
        self.wake = threading.Event()  # set when a standby lease is wanted

    # ------------------------------------------------------------- spending

    def spend(self, credit: CreditKey, now: float) -> tuple[Lease, int] | None:
        """Hand out one call of the open lease (or of the standby one): the lease and the
        calls left after it; None when this worker holds none."""
        with self.lock:
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
                self.wake.set()
            return lease, self._remaining(credit)

    def finish(self, call: Call, lease: Lease, record: UsageRecord) -> None:
        """A call finished (once: a second finish of the same call changes nothing): its
        usage row waits for the keeper; a refunded call goes back into its lease (a
        closed lease's settle returns it to the credit)."""
        with self.lock:
            if call.done:
                return
            call.done = True
            lease.in_flight -= 1
            if record.refunded:
                lease.left += 1
            self._done.append(record)

    def remaining(self, credit: CreditKey) -> int:
        """Calls left as this worker knows them (another worker's recent calls show up
        when this one next takes a lease)."""
        with self.lock:
            return self._remaining(credit)

    def unwritten(self, buyer: str) -> dict[int, int]:
        """Calls of `buyer` this worker served and has not written yet, per model."""
        counts: dict[int, int] = {}
        with self.lock:
            for record in self._done:
                if record.buyer == buyer and record.charged and not record.refunded:
                    counts[record.model_id] = counts.get(record.model_id, 0) + 1
        return counts

    def unwritten_count(self) -> int:
        """Finished calls (served or given back) waiting for the keeper to write them."""
        with self.lock:
            return len(self._done)

    def refill_lock(self, credit: CreditKey) -> threading.Lock:
        """One lease taken at a time per credit and worker (a call that finds the lease
        dry waits for the standby being taken rather than taking another)."""
        with self.lock:
            return self._refill_locks.setdefault(credit, threading.Lock())

    def next_size(self, credit: CreditKey) -> int:
        """How many calls the next lease of `credit` asks for."""
        with self.lock:
            return self._size(credit)

    # ------------------------------------------------------ leases coming in

    def install(self, lease: Lease, outside: int) -> None:
        """A lease just taken for a call that found none: it becomes the open one."""
        credit = lease.credit
        with self.lock:
            old = self._open.get(credit)
            if old is not None:
                self._resize(credit, old, lease.taken)
            self._retire(old)
            self._open[credit] = lease
            self._outside[credit] = outside

    def take_wanted(self) -> list[CreditKey]:
        """The credits that asked for a standby lease since the last call."""
        with self.lock:
            wanted, self._wanted = self._wanted, set()
        return sorted(wanted)

    def wants_standby(self, credit: CreditKey) -> bool:
        """Whether `credit` is still busy here and has no standby lease."""
        with self.lock:
            return credit in self._open and credit not in self._standby

    def add_standby(self, lease: Lease, outside: int) -> None:
        """A standby lease taken in the background (closed at once if its credit went
        idle meanwhile)."""
        credit = lease.credit
        with self.lock:
            self._outside[credit] = outside
            if credit in self._open and credit not in self._standby:
                self._standby[credit] = lease
            else:
                lease.closed = True
                self._closing.append(lease)

    # ------------------------------------------------------------- flushing

    def plan_flush(self, started: float) -> FlushPlan:
        """Retire dry and idle leases and take what the keeper must write now."""
        with self.lock:
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
        return FlushPlan(done, closing, open_now)

    def flush_failed(self, plan: FlushPlan) -> None:
        """Keep the plan's calls for the next round (writing them is idempotent)."""
        with self.lock:
            self._done = plan.done + self._done

    def flushed(
        self, plan: FlushPlan, returned: dict[str, int], synced: dict[str, bool], started: float
    ) -> None:
        """The plan was written: settled leases forgotten (their calls counted outside),
        leases swept or settled elsewhere retired, recalled ones retired, the rest kept
        alive."""
        with self.lock:
            self._closing = [lease for lease in self._closing if lease not in plan.closing]
            for lease in plan.closing:
                credit = lease.credit
                self._outside[credit] = self._outside.get(credit, 0) + returned[lease.id]
            for lease in plan.open_now:
                if lease.closed:
                    continue
                if lease.id not in synced:  # swept or settled elsewhere
                    self._retire(lease)
                    self._closing.remove(lease)
                elif synced[lease.id]:  # recalled
                    self._retire(lease)
                else:
                    lease.alive_at = started

    def retire_all(self) -> None:
        """Stop spending every lease (the worker is stopping)."""
        with self.lock:
            for lease in [*self._open.values(), *self._standby.values()]:
                self._retire(lease)

    # ----------------------------------------------- under the pool's lock

    def _usable(self, lease: Lease | None, now: float) -> bool:
        return (
            lease is not None
            and not lease.closed
            and lease.left > 0
            and now - lease.alive_at < self.ttl / 2  # might be swept: never spend it
        )

    def _size(self, credit: CreditKey) -> int:
        return self._want.get(credit, min(MIN_LEASE, self.lease_size))

    def _resize(self, credit: CreditKey, spent: Lease, now: float) -> None:
        """Size the next lease so that a busy credit's lease lasts about LEASE_SECONDS:
        few database round trips at any rate, small leases for slow buyers."""
        want = self._size(credit)
        lasted = now - spent.taken
        if spent.left <= 0 and lasted < LEASE_SECONDS:
            want = min(want * 2, self.lease_size)
        elif lasted > 10 * LEASE_SECONDS:
            want = max(want // 2, min(MIN_LEASE, self.lease_size))
        self._want[credit] = want

    def _remaining(self, credit: CreditKey) -> int:
        held = (self._open.get(credit), self._standby.get(credit), *self._closing)
        leased = sum(
            lease.left for lease in held if lease and (lease.buyer, lease.model_id) == credit
        )
        return leased + self._outside.get(credit, 0)

    def _retire(self, lease: Lease | None) -> None:
        """Stop spending `lease`; the next flush settles it."""
        if lease is not None and not lease.closed:
            lease.closed = True
            self._closing.append(lease)
            credit = lease.credit
            if self._open.get(credit) is lease:
                del self._open[credit]
            if self._standby.get(credit) is lease:
                del self._standby[credit]
