"""A test-only payment method: free trial calls, a few per address, named by a header.
It exists to show that a payment method is one module behind `PaymentMethod` plus one
line of registration (`gateway.payments.register(FreeTrial(gateway.engine))`); it
authenticates nobody, which is why it lives with the tests."""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from marketplace import errors
from marketplace.db.tables import Listing
from marketplace.payments.method import Headers, Payer, Payment
from marketplace.usage.records import UsageRecord, write_usage

HEADER = "X-Trial-Pass"


class FreeTrial:
    """`calls` free calls per (address, model), counted in memory."""

    name = "free-trial"
    binds_request = False

    def __init__(self, engine: Engine, calls: int = 2) -> None:
        self.engine = engine
        self.calls = calls
        self._used: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def claims(self, headers: Headers) -> bool:
        return headers.get(HEADER) is not None

    def identify(self, headers: Headers) -> Payer:
        address = (headers.get(HEADER) or "").lower()
        if len(address) != 42 or not address.startswith("0x"):
            raise errors.Unauthenticated(f"{HEADER} must be an address")
        return Payer(address, "trial")

    def offer(self, listing: Listing) -> dict[str, object] | None:
        if not listing.active:
            return None
        return {"scheme": self.name, "calls": self.calls, "header": HEADER}

    def begin(self, payer: Payer, listing: Listing, inference_id: str) -> Payment:
        credit = (payer.address, listing.model_id)
        with self._lock:
            if self._used.get(credit, 0) >= self.calls:
                raise errors.PaymentRequired(f"the {self.calls} free calls are used", [])
            self._used[credit] = self._used.get(credit, 0) + 1
        return Payment(inference_id, payer, listing.model_id)

    def complete(self, payment: Payment, usage: UsageRecord) -> dict[str, str]:
        self._record(usage._replace(charged=False))
        return {"X-Trial-Calls-Remaining": str(self._left(payment))}

    def complete_after_error(self, payment: Payment, usage: UsageRecord) -> dict[str, str]:
        with self._lock:
            if not payment.done:
                payment.done = True
                self._used[(payment.payer.address, payment.model_id)] -= 1
        self._record(usage._replace(charged=False))
        return {"X-Trial-Calls-Remaining": str(self._left(payment))}

    def _left(self, payment: Payment) -> int:
        with self._lock:
            return self.calls - self._used.get((payment.payer.address, payment.model_id), 0)

    def _record(self, usage: UsageRecord) -> None:
        with self.engine.begin() as conn:
            write_usage(conn, [usage])
