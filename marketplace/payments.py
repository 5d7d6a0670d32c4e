"""How a paid call is paid for, as snet-daemon's PaymentHandler does it: begin (take the
money) -> run -> complete, or complete after error (give it back). Prepaid credits are
the first method; vouchers, x402 or free trials would be new classes of this shape."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from marketplace import errors, ledger
from marketplace.models import ApiKey, Listing

AcceptsFn = Callable[[Listing], list[dict[str, object]]]


@dataclass
class Payment:
    """One begun payment."""

    inference_id: str
    buyer: str
    model_id: int
    remaining: int
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class UsageRecorder:
    """Marks served calls in the usage table in batches, off the request path: the
    credit was already taken synchronously (that is what must be exactly once); a row
    still "running" after a crash says honestly that the outcome is unknown."""

    def __init__(self, sessions: sessionmaker[Session], interval: float = 0.2) -> None:
        self.sessions = sessions
        self.interval = interval
        self._pending: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-recorder", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def record(self, inference_id: str, latency_ms: float) -> None:
        with self._lock:
            self._pending.append((inference_id, latency_ms))

    def flush(self) -> None:
        """Write every pending completion now."""
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            try:
                with self.sessions() as s, s.begin():
                    ledger.complete_many(s, batch)
            except Exception:
                with self._lock:  # keep them for the next round
                    self._pending = batch + self._pending
                raise

    def _run(self) -> None:
        while not self._wake.wait(self.interval):
            try:
                self.flush()
            except Exception:  # the next round retries; never kill the thread
                logging.getLogger("modelmarket").exception("usage flush failed")


class PrepaidCredits:
    """Calls bought on-chain in advance; one credit per call."""

    name = "prepaid"

    def __init__(self, sessions: sessionmaker[Session], accepts: AcceptsFn) -> None:
        self.sessions = sessions
        self.engine = sessions.kw["bind"]
        self.accepts = accepts
        self.usage = UsageRecorder(sessions)

    def begin(self, key: ApiKey, listing: Listing) -> Payment:
        """Take one credit (atomically); PaymentRequired with how to pay when none is left."""
        try:
            with self.engine.begin() as s:
                inference_id, left = ledger.consume(
                    s, key_id=key.id, buyer=key.address, model_id=listing.model_id
                )
        except ledger.NoCredit:
            raise errors.PaymentRequired(
                f"no calls left on model {listing.model_id}: buy some, then post the receipt",
                self.accepts(listing),
            ) from None
        return Payment(inference_id, key.address, listing.model_id, left)

    def complete(self, payment: Payment) -> None:
        """The call was served: keep the credit (recorded in the next batch)."""
        self.usage.record(payment.inference_id, payment.elapsed_ms)

    def complete_after_error(self, payment: Payment, code: str) -> int:
        """The call failed: give the credit back (once). Returns the calls left."""
        with self.sessions() as s, s.begin():
            left = ledger.refund(s, payment.inference_id, code, payment.elapsed_ms)
        return payment.remaining if left is None else left
