"""The lease pool alone, with no database: what a worker may hand out from the leases it
holds, and what it hands the keeper to write."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from marketplace.payments.prepaid.pool import IDLE_SECONDS, Lease, LeasePool
from marketplace.usage.records import UsageRecord

BUYER = "0x" + "bb" * 20
CREDIT = (BUYER, 7)


@dataclass
class Call:
    done: bool = False


def lease(lease_id: str, calls: int, now: float = 0.0) -> Lease:
    return Lease(lease_id, BUYER, 7, calls, calls, now, now, taken=now)


def record(call_id: str, lease_id: str, *, refunded: bool = False) -> UsageRecord:
    status = "failed" if refunded else "ok"
    return UsageRecord(
        call_id, "k", BUYER, 7, status, lease_id, None, 1.0, True, refunded, datetime.now(UTC)
    )


def test_a_lease_hands_out_exactly_its_calls_then_none():
    pool = LeasePool(lease_size=64, ttl=30.0)
    pool.install(lease("a", 3), outside=10)
    left = [pool.spend(CREDIT, 0.1) for _ in range(4)]
    assert [x[1] if x else None for x in left] == [12, 11, 10, None]
    assert pool.remaining(CREDIT) == 10  # what is left outside leases, last seen


def test_the_next_lease_is_asked_for_at_half_and_taken_over_without_a_wait():
    pool = LeasePool(lease_size=64, ttl=30.0)
    pool.install(lease("a", 4), outside=100)
    pool.spend(CREDIT, 0.1)
    assert pool.take_wanted() == []
    pool.spend(CREDIT, 0.1)
    pool.spend(CREDIT, 0.1)  # 1 of 4 left: under half
    assert pool.take_wanted() == [CREDIT]
    assert pool.wants_standby(CREDIT)
    pool.add_standby(lease("b", 8), outside=92)
    pool.spend(CREDIT, 0.2)  # the open lease's last call
    taken = pool.spend(CREDIT, 0.2)
    assert taken is not None and taken[0].id == "b", "the standby became the open lease"


def test_a_lease_is_settled_only_once_none_of_its_calls_runs():
    pool = LeasePool(lease_size=64, ttl=30.0)
    pool.install(lease("a", 2), outside=0)
    running, call = pool.spend(CREDIT, 0.0)[0], Call()  # type: ignore[index]
    plan = pool.plan_flush(IDLE_SECONDS + 1)  # idle: retired, but a call still runs
    assert plan.closing == [] and plan.done == []
    pool.finish(call, running, record("i1", "a"))
    plan = pool.plan_flush(IDLE_SECONDS + 2)
    assert [x.id for x in plan.closing] == ["a"] and [r.id for r in plan.done] == ["i1"]


def test_a_refunded_call_goes_back_once():
    pool = LeasePool(lease_size=64, ttl=30.0)
    pool.install(lease("a", 2), outside=0)
    running, call = pool.spend(CREDIT, 0.0)[0], Call()  # type: ignore[index]
    failed = record("i1", "a", refunded=True)
    pool.finish(call, running, failed)
    pool.finish(call, running, failed)  # a second completion changes nothing
    assert running.left == 2 and running.in_flight == 0
    assert [r.id for r in pool.plan_flush(0.1).done] == ["i1"]


def test_a_lease_not_confirmed_alive_within_half_the_ttl_is_never_spent():
    pool = LeasePool(lease_size=64, ttl=30.0)
    pool.install(lease("a", 5, now=0.0), outside=0)
    assert pool.spend(CREDIT, 14.0) is not None
    assert pool.spend(CREDIT, 15.0) is None, "another worker may sweep it from now on"


def test_unwritten_counts_only_served_calls_of_that_buyer():
    pool = LeasePool(lease_size=64, ttl=30.0)
    pool.install(lease("a", 5), outside=0)
    for call_id, refunded in (("i1", False), ("i2", True), ("i3", False)):
        held = pool.spend(CREDIT, 0.0)[0]  # type: ignore[index]
        pool.finish(Call(), held, record(call_id, "a", refunded=refunded))
    assert pool.unwritten(BUYER) == {7: 2}
    assert pool.unwritten("0x" + "cc" * 20) == {}
