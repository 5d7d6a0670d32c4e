"""Prepaid credits spent from leases, two gateway workers at a time (two PrepaidCredits
behind their own payment pipelines, on one database, each with its own engine and
background thread), on SQLite and PostgreSQL: no call is lost or served twice when one
worker holds what the other needs. The worker crash case (SIGKILL) is in
test_gateway_concurrency.py, under granian and gunicorn."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from inference.errors import InferenceFailed
from marketplace import errors
from marketplace.chain.artifacts import Deployment
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import CreditLease, Listing, Usage
from marketplace.payments.method import Payer, Payment
from marketplace.payments.pipeline import PaymentPipeline
from marketplace.payments.prepaid import ledger
from marketplace.payments.prepaid.method import RECALL_WAIT, PrepaidCredits

BUYER = "0x" + "bb" * 20
PAYER = Payer(BUYER, "k1")
LISTING = Listing(model_id=7, active=True, token="0x" + "77" * 20, price_per_call=5)
DEPLOYMENT = Deployment(
    31337, "0x" + "11" * 20, "0x" + "77" * 20, 1, "0x" + "22" * 20, "0x" + "33" * 20
)


@dataclass
class Worker:
    """One gateway worker's payments: prepaid credits behind the payment pipeline."""

    method: PrepaidCredits

    def __post_init__(self) -> None:
        self.pipeline = PaymentPipeline([self.method])

    def begin(self) -> Payment:
        return self.pipeline.begin(self.method, PAYER, LISTING)

    def complete(self, payment: Payment) -> None:
        self.pipeline.complete(self.method, payment, LISTING)

    def complete_after_error(self, payment: Payment) -> int:
        """Calls left after the failed call's credit came back."""
        failed = InferenceFailed("the model failed")
        headers = self.pipeline.complete_after_error(self.method, payment, failed)
        return int(headers["X-Credits-Remaining"])

    def flush(self) -> None:
        self.method.flush()

    def close(self) -> None:
        self.method.close()


def prepaid(url: str, **kw: int) -> Worker:
    return Worker(PrepaidCredits(make_engine(url), deployment=lambda: DEPLOYMENT, **kw))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request) -> str:  # type: ignore[no-untyped-def]
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def workers(url: str) -> Iterator[tuple[Worker, Worker]]:
    pair = (prepaid(url), prepaid(url))
    yield pair  # type: ignore[misc]
    for worker in pair:
        worker.close()


def credit(url: str, calls: int) -> None:
    sessions = session_factory(make_engine(url))
    with sessions() as s, s.begin():
        ledger.credit(
            s,
            ledger.PurchaseRecord(
                tx_hash="0x" + "aa" * 32,
                log_index=0,
                buyer=BUYER,
                model_id=7,
                calls=calls,
                amount=calls,
                fee=0,
                block_number=1,
                block_hash="0x" + "cc" * 32,
                source="receipt",
            ),
        )


def state(url: str) -> tuple[int, int, int]:
    """(calls left, usage rows served, open leases) as the database has them."""
    with session_factory(make_engine(url))() as s:
        left = ledger.remaining(s, BUYER, 7)
        served = s.scalar(select(func.count()).select_from(Usage).where(Usage.refunded.is_(False)))
        open_leases = s.scalar(select(func.count()).where(CreditLease.settled_at.is_(None)))
        return left, int(served or 0), int(open_leases or 0)


def serve(worker: Worker, n: int) -> int:
    """Serve up to n calls; how many were paid for."""
    for i in range(n):
        try:
            worker.complete(worker.begin())
        except errors.PaymentRequired:
            return i
    return n


def test_calls_one_worker_holds_reach_the_worker_that_needs_them(url, workers):
    a, b = workers
    credit(url, 40)
    assert serve(a, 1) == 1  # a now holds a lease with calls left in it
    started = time.monotonic()
    served_by_b = serve(b, 100)
    assert served_by_b == 39, "b got a's unspent calls back through a recall"
    assert time.monotonic() - started < 10 * RECALL_WAIT
    with pytest.raises(errors.PaymentRequired) as no_credit:
        a.begin()
    assert [offer["scheme"] for offer in no_credit.value.accepts] == ["prepaid-credits"]
    a.close()
    b.close()
    assert state(url) == (0, 40, 0)


def test_a_call_in_flight_is_never_given_to_another_worker(url, workers):
    a, b = workers
    credit(url, 1)
    running = a.begin()  # the only call, still running in worker a
    started = time.monotonic()
    with pytest.raises(errors.PaymentRequired):
        b.begin()  # asks a for it, but a cannot give back a running call
    assert time.monotonic() - started >= RECALL_WAIT
    a.complete(running)
    a.flush()
    assert state(url) == (0, 1, 0)


def test_a_call_that_fails_in_one_worker_is_served_by_the_other(url, workers):
    a, b = workers
    credit(url, 1)
    running = a.begin()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(b.begin()))
    waiter.start()  # b waits for a's call to come back
    time.sleep(0.3)
    assert a.complete_after_error(running) == 1
    waiter.join(10)
    assert len(got) == 1, "b was paid by the refunded call"
    b.complete(got[0])  # type: ignore[arg-type]
    a.close()
    b.close()
    assert state(url) == (0, 1, 0)
    with session_factory(make_engine(url))() as s:
        rows = s.execute(select(Usage.status, Usage.refunded).order_by(Usage.status)).all()
    assert rows == [("failed", True), ("ok", False)]


def test_lease_size_one_takes_each_call_from_the_database(url):
    """Each call is its own lease of one. The next lease is taken in the background
    before the open one runs dry, so a standby may be open when the worker closes: it
    goes back unspent (which lease a thread's timing took is not what is held)."""
    worker = prepaid(url, lease_size=1)
    credit(url, 10)
    assert serve(worker, 5) == 5
    worker.close()
    with session_factory(make_engine(url))() as s:
        leases = s.execute(select(CreditLease.granted, CreditLease.used)).all()
    assert all(granted == 1 for granted, _ in leases)
    assert sorted(used for _, used in leases)[-5:] == [1] * 5  # a call a lease
    assert len(leases) <= 6 and sum(used for _, used in leases) == 5  # a standby, unspent
    assert state(url) == (5, 5, 0)
