"""The background keeper of one worker's leases: every FLUSH_INTERVAL it writes the
finished calls' usage rows and counts them against their leases, keeps open leases
alive, settles retired ones, takes the standby leases busy credits asked for, and now
and then sweeps other workers' leases whose holder went silent (a crashed worker's).
(Request threads write too, but only to take a lease a call is waiting for.) A failed
round is retried whole.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from marketplace.payments.prepaid import leases
from marketplace.payments.prepaid.pool import CreditKey, LeasePool

FLUSH_INTERVAL = 0.1  # seconds between writes of finished calls

log = logging.getLogger("modelmarket")


class LeaseKeeper:
    """Writes one worker's pool to the database, on its own thread."""

    def __init__(
        self,
        engine: Engine,
        pool: LeasePool,
        take_standby: Callable[[CreditKey], None],
        ttl: float,
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.ttl = ttl
        self._take_standby = take_standby
        self._tick_lock = threading.Lock()
        self._next_sweep = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="credit-leases", daemon=True)
        self._pid = -1
        # since when writing has failed (the database is down), for health; None when well
        self.failing_since: float | None = None

    def start(self) -> None:
        """Run in this process; its leases are given back when the process exits."""
        self._pid = os.getpid()
        self._thread.start()
        atexit.register(self.stop)

    def alive(self) -> bool:
        """Whether this process's keeper thread runs (health checks ask)."""
        return self._pid == os.getpid() and self._thread.is_alive()

    def flush(self) -> None:
        """Write finished calls, settle leases that are done, keep the rest alive, and
        now and then sweep leases whose holder went silent."""
        with self._tick_lock:
            self._flush()

    @contextmanager
    def between_writes(self) -> Iterator[None]:
        """Hold off the next write while the block runs: the database and the pool's
        unwritten calls then tell one consistent story (nothing in between)."""
        with self._tick_lock:
            yield

    def sweep(self, started: float) -> None:
        """Settle other workers' leases not heard from for the TTL (a crashed worker's),
        every TTL/3."""
        if started < self._next_sweep:
            return
        self._next_sweep = started + self.ttl / 3  # a failed sweep waits its turn too
        now = time.time()
        with self.engine.begin() as conn:  # its own transaction: other holders' rows
            for lease_id in leases.stale_leases(conn, now - self.ttl):
                leases.settle(conn, lease_id, now)

    def stop(self) -> None:
        """Write everything and give every lease back (the worker is stopping). Only in
        the process that started it: a forked child must never settle its parent's."""
        if self._pid != os.getpid() or self._stop.is_set():
            return
        atexit.unregister(self.stop)
        self._stop.set()
        self.pool.wake.set()
        self.pool.retire_all()
        try:
            self.flush()
        except Exception:  # the sweep of another worker gives them back after the TTL
            log.exception("giving leased calls back failed")

    def _flush(self) -> None:
        started = time.monotonic()
        plan = self.pool.plan_flush(started)
        if plan.empty:
            self.sweep(started)
            return  # idle: no write lock taken
        alive = [lease.id for lease in plan.open_now]
        now = time.time()
        try:
            with self.engine.begin() as conn:
                touched = {str(c.lease_id) for c in plan.done} | {x.id for x in plan.closing}
                leases.lock_leases(conn, sorted(touched | set(alive)))
                leases.record_calls(conn, plan.done, now)
                synced = leases.sync(conn, alive, now)
                returned = {
                    lease.id: leases.settle(conn, lease.id, now)
                    for lease in sorted(plan.closing, key=lambda lease: lease.id)
                }
        except Exception:
            self.pool.flush_failed(plan)
            raise
        self.pool.flushed(plan, returned, synced, started)
        self.sweep(started)

    def _run(self) -> None:
        wake = self.pool.wake
        while True:
            wake.wait(FLUSH_INTERVAL)
            wake.clear()
            if self._stop.is_set():
                return
            try:
                for credit in self.pool.take_wanted():
                    self._take_standby(credit)
                self.flush()
            except Exception:  # the next round retries; never kill the thread
                if self.failing_since is None:  # once per outage, with its traceback
                    self.failing_since = time.time()
                    log.exception("writing paid calls failed; retrying every round")
            else:
                if self.failing_since is not None:
                    log.warning("writing paid calls works again")
                self.failing_since = None
