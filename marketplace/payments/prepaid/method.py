"""Prepaid credits, the first payment method: calls bought on-chain in advance with
`purchase`, credited once (by a posted receipt or the indexer), one credit per call.

Credits are spent from leases so that a paid call costs no database round trip: a
worker takes a block of a (buyer, model) credit's calls in one conditional UPDATE
(`leases.lease`; 16 calls at first, doubling while a lease lasts under a second, up to
`lease_size`), spends them in memory (`pool`), takes the next lease in the background
before the open one runs dry, and writes the finished calls' usage rows every
FLUSH_INTERVAL (`keeper`). A lease goes back (`leases.settle`: its unspent calls return
to the credit, once) when it runs dry, sits idle, is recalled by a worker that found
the credit empty, or the worker stops; never while one of its calls runs. A worker that
dies without settling is swept by the others after `ttl`; a call is never served from a
lease its holder has not kept alive within ttl/2, so a swept lease is never spent.

What it costs: a hard crash of a worker (SIGKILL, power) gives back the calls it served
in its last FLUSH_INTERVAL, because they were not written yet; other workers may show a
few calls' stale X-Credits-Remaining; and the last calls of a credit pay the round trip
(leases shrink to single calls near the end, so no worker holds calls another needs).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from marketplace import errors
from marketplace.accounts.keys import KeyCache, bearer_token
from marketplace.chain.artifacts import Deployment
from marketplace.db.tables import Listing
from marketplace.payments.method import Headers, Payer, Payment
from marketplace.payments.prepaid import leases, ledger
from marketplace.payments.prepaid.keeper import FLUSH_INTERVAL, LeaseKeeper
from marketplace.payments.prepaid.pool import CreditKey, Lease, LeasePool
from marketplace.usage.records import UsageRecord

PURCHASE_TIMEOUT = 3600  # an x402 field: how long the offer's terms hold (seconds)
RECALL_WAIT = 1.5  # how long a worker that found the credit empty waits for recalled calls


@dataclass(eq=False)
class PrepaidPayment(Payment):
    """A call taken from a lease."""

    lease: Lease | None = None
    remaining: int = 0  # calls left after this one, as this worker knows them


class PrepaidCredits:
    """Calls bought on-chain in advance; one credit per call, spent from leases."""

    name = "prepaid"
    binds_request = False  # an API key is a secret: nothing to bind

    def __init__(
        self,
        engine: Engine,
        *,
        keys: KeyCache | None = None,
        deployment: Callable[[], Deployment] | None = None,
        lease_size: int = 4096,
        ttl: float = 30.0,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.deployment = deployment
        self.lease_size = lease_size
        self.ttl = ttl
        self._pid = -1
        self._start_lock = threading.Lock()

    # ---------------------------------------------------------------- the method

    def claims(self, headers: Headers) -> bool:
        """An `Authorization` header (an API key) pays with prepaid credits."""
        return headers.get("Authorization") is not None

    def identify(self, headers: Headers) -> Payer:
        """The API key's owner (401 without a live key)."""
        if self.keys is None:
            raise errors.ConfigurationError("prepaid credits need the API key cache")
        key = self.keys.authenticate(bearer_token(headers.get("Authorization")))
        return Payer(key.address, key.id)

    def offer(self, listing: Listing) -> dict[str, object] | None:
        """What to call on-chain to buy calls, then what to post."""
        if not listing.active or self.deployment is None:
            return None
        dep = self.deployment()
        return {
            # every field an x402 offer requires (so the PAYMENT-REQUIRED header, which
            # lists it beside `exact`, stays valid for x402 clients): the price of one
            # call, paid to the marketplace; `extra` and the rest say how to buy
            "scheme": "prepaid-credits",
            "network": f"eip155:{dep.chain_id}",
            "amount": str(listing.price_per_call),
            "asset": listing.token,
            "payTo": dep.marketplace,
            "maxTimeoutSeconds": PURCHASE_TIMEOUT,
            "extra": {"calls": "any number, bought on-chain", "redeem": "/api/v1/receipts"},
            "chain_id": dep.chain_id,
            "marketplace": dep.marketplace,
            "model_id": listing.model_id,
            "token": listing.token,
            "price_per_call": str(listing.price_per_call),
            "calls": [
                {
                    "to": listing.token,
                    "function": "approve(address,uint256)",
                    "args": [dep.marketplace, "<calls * price_per_call>"],
                },
                {
                    "to": dep.marketplace,
                    "function": "purchase(uint256,uint256,uint256)",
                    "args": [listing.model_id, "<calls>", str(listing.price_per_call)],
                },
            ],
            "then": {"method": "POST", "path": "/api/v1/receipts", "body": {"tx_hash": "<hash>"}},
            "prepare": f"/api/v1/models/{listing.model_id}/purchase",
        }

    def begin(self, payer: Payer, listing: Listing, inference_id: str) -> PrepaidPayment:
        """Take one call; PaymentRequired when none is left."""
        if self._pid != os.getpid():
            self._start()
        model_id = listing.model_id  # an ORM attribute: read once
        credit = (payer.address, model_id)
        taken = self.pool.spend(credit, time.monotonic())
        if taken is None:
            with self.pool.refill_lock(credit):
                taken = self._lease_and_spend(credit, listing)
        lease, remaining = taken
        return PrepaidPayment(
            inference_id, payer, model_id, lease.id, lease=lease, remaining=remaining
        )

    def complete(self, payment: Payment, usage: UsageRecord) -> dict[str, str]:
        """The call was served: it is spent (written in the keeper's next round)."""
        assert isinstance(payment, PrepaidPayment) and payment.lease is not None
        self.pool.finish(payment, payment.lease, usage)
        return {"X-Credits-Remaining": str(payment.remaining)}

    def complete_after_error(self, payment: Payment, usage: UsageRecord) -> dict[str, str]:
        """The call failed: its credit goes back (once)."""
        assert isinstance(payment, PrepaidPayment) and payment.lease is not None
        self.pool.finish(payment, payment.lease, usage)
        left = self.pool.remaining((payment.payer.address, payment.model_id))
        return {"X-Credits-Remaining": str(left)}

    def calls_left(self, session: Session, buyer: str) -> dict[int, int]:
        """Calls `buyer` has left per model as this worker knows them: the database's
        count (one statement: one snapshot), less the calls this worker served and has
        not written yet. A read: it writes nothing itself (it starts this worker's
        keeper, whose sweeps give back a crashed worker's leases)."""
        if self._pid != os.getpid():
            self._start()
        with self.keeper.between_writes():  # no write lands between the two counts
            left = ledger.remaining_by_model(session, buyer)
            for model_id, served in self.pool.unwritten(buyer.lower()).items():
                left[model_id] = left.get(model_id, 0) - served
        return left

    def health(self) -> dict[str, object]:
        """This worker's keeper: running, stopped (it died) or idle (no prepaid call yet);
        calls served and not yet written; since when writing them fails, if it does."""
        if self._pid != os.getpid():
            return {"keeper": "idle", "unwritten": 0, "failing_since": None}
        return {
            "keeper": "running" if self.keeper.alive() else "stopped",
            "unwritten": self.pool.unwritten_count(),
            "failing_since": self.keeper.failing_since,
        }

    # ------------------------------------------------------------ the worker

    def flush(self) -> None:
        """Write finished calls now, rather than in the keeper's next round."""
        if self._pid != os.getpid():
            self._start()
        self.keeper.flush()

    def close(self) -> None:
        """Write everything and give every lease back (the worker is stopping)."""
        if self._pid == os.getpid():
            self.keeper.stop()

    def _start(self) -> None:
        # Per process (gunicorn may build the app before forking its workers), once:
        # two pools over the same leases would spend a call twice.
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self.holder = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
            self.pool = LeasePool(self.lease_size, self.ttl)
            self.keeper = LeaseKeeper(self.engine, self.pool, self._take_standby, self.ttl)
            self._pid = os.getpid()  # after the state: other threads wait until now
            self.keeper.start()

    def _lease_and_spend(self, credit: CreditKey, listing: Listing) -> tuple[Lease, int]:
        deadline = time.monotonic() + RECALL_WAIT
        retried_empty = False
        while True:
            taken = self.pool.spend(credit, time.monotonic())
            if taken is not None:
                return taken
            with self.engine.begin() as conn:
                got = self._take_lease(conn, credit)
                elsewhere = 0 if got else leases.recall(conn, *credit, holder=self.holder)
            if got is not None:
                self.pool.install(*got)
                continue
            # Nothing held elsewhere either, but a lease settled while this transaction
            # ran (PostgreSQL: the recall waited for its row lock) is only visible to
            # the next one: 402 only after an empty try that began after that.
            if not elsewhere and not retried_empty:
                retried_empty = True
                continue
            if not elsewhere or time.monotonic() > deadline:
                raise errors.PaymentRequired(_no_calls_left(listing), [])
            time.sleep(FLUSH_INTERVAL / 4)  # other workers are giving their calls back

    def _take_lease(self, conn: Connection, credit: CreditKey) -> tuple[Lease, int] | None:
        """A new lease of `credit` and the calls left outside leases, or None."""
        lease_id = secrets.token_hex(16)
        got = leases.lease(
            conn,
            lease_id=lease_id,
            holder=self.holder,
            buyer=credit[0],
            model_id=credit[1],
            want=self.pool.next_size(credit),
            now=time.time(),
        )
        if got is None:
            return None
        now = time.monotonic()
        return Lease(lease_id, credit[0], credit[1], got[0], got[0], now, now, taken=now), got[1]

    def _take_standby(self, credit: CreditKey) -> None:
        """The next lease of a busy credit, taken by the keeper before the open one runs
        dry, so that a paid call does not wait for the database."""
        with self.pool.refill_lock(credit):
            if not self.pool.wants_standby(credit):
                return  # went idle, or a call took the next lease meanwhile
            with self.engine.begin() as conn:
                got = self._take_lease(conn, credit)
            if got is not None:  # None: the open lease's calls are the last
                self.pool.add_standby(*got)


def _no_calls_left(listing: Listing) -> str:
    if not listing.active:
        return (
            f"no calls left on model {listing.model_id}, and it is delisted: no more can be bought"
        )
    return (
        f"no calls left on model {listing.model_id}: buy calls on-chain"
        f" (POST /api/v1/models/{listing.model_id}/purchase gives the approve and"
        " purchase transactions), then POST the transaction hash to /api/v1/receipts"
    )
