"""The ledger's exactly-once rules on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import Purchase, Usage
from marketplace.payments.prepaid import leases, ledger
from marketplace.usage import records


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request):  # type: ignore[no-untyped-def]
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return session_factory(make_engine(url))


def _purchase(**kw) -> ledger.PurchaseRecord:  # type: ignore[no-untyped-def]
    base = {
        "tx_hash": "0x" + "aa" * 32,
        "log_index": 3,
        "buyer": "0x" + "bb" * 20,
        "model_id": 7,
        "calls": 5,
        "amount": 50,
        "fee": 1,
        "block_number": 10,
        "block_hash": "0x" + "cc" * 32,
        "source": "indexer",
    }
    return ledger.PurchaseRecord(**{**base, **kw})


def test_credit_once_revoke_once_and_credit_again_when_re_mined(sessions):
    buyer = "0x" + "bb" * 20
    with sessions() as s, s.begin():
        assert ledger.credit(s, _purchase())
        assert not ledger.credit(s, _purchase(source="receipt"))  # the other path: no-op
        assert ledger.remaining(s, buyer, 7) == 5
        assert ledger.revoke(s, "0x" + "aa" * 32, 3)
        assert not ledger.revoke(s, "0x" + "aa" * 32, 3)
        assert ledger.remaining(s, buyer, 7) == 0
        # the same transaction mined again in the new canonical chain
        assert ledger.credit(s, _purchase(block_number=12, block_hash="0x" + "dd" * 32))
        assert not ledger.credit(s, _purchase(block_number=12, block_hash="0x" + "dd" * 32))
        assert ledger.remaining(s, buyer, 7) == 5


BUYER = "0x" + "bb" * 20


def _lease(s, lease_id: str, want: int, holder: str = "w1"):  # type: ignore[no-untyped-def]
    return leases.lease(
        s.connection(),
        lease_id=lease_id,
        holder=holder,
        buyer=BUYER,
        model_id=7,
        want=want,
        now=1.0,
    )


def _call(iid: str, lease_id: str, refunded: bool = False) -> records.UsageRecord:
    return records.UsageRecord(
        id=iid,
        key_id="k",
        buyer=BUYER,
        model_id=7,
        status="failed" if refunded else "ok",
        lease_id=lease_id,
        error=None,
        latency_ms=1.0,
        charged=True,
        refunded=refunded,
        created_at=datetime.now(UTC),
    )


def test_leases_shrink_near_the_end_of_a_credit_and_never_overdraw(sessions):
    with sessions() as s, s.begin():
        ledger.credit(s, _purchase(calls=300))
    sizes = []
    with sessions() as s, s.begin():
        while (got := _lease(s, f"l{len(sizes)}", want=50)) is not None:
            sizes.append(got)
    # 50 while at least 4 leases' worth is left, then a quarter of what is left, then ones
    expected = [50, 50, 50, 37, 28, 21, 16, 12, 9, 6, 5, 4, 3, 2] + [1] * 7
    assert [g for g, _ in sizes] == expected
    assert sum(g for g, _ in sizes) == 300 and sizes[-1][1] == 0
    with sessions() as s:
        assert ledger.remaining(s, BUYER, 7) == 300  # leased calls are still the buyer's


def test_a_lease_counts_served_calls_and_settles_once(sessions):
    with sessions() as s, s.begin():
        ledger.credit(s, _purchase(calls=100))
        assert _lease(s, "a", want=10) == (10, 90)
    with sessions() as s, s.begin():
        calls = [_call("i1", "a"), _call("i2", "a"), _call("i3", "a", refunded=True)]
        leases.record_calls(s.connection(), calls, now=2.0)
        leases.record_calls(s.connection(), calls, now=2.0)  # a retry: nothing twice
    with sessions() as s, s.begin():
        assert ledger.remaining(s, BUYER, 7) == 98
        assert leases.settle(s.connection(), "a", now=3.0) == 8
        assert leases.settle(s.connection(), "a", now=3.0) == 0  # once
        assert ledger.remaining(s, BUYER, 7) == 98
        # a call that finished after its lease was settled is charged to the credit
        leases.record_calls(s.connection(), [_call("i4", "a")], now=4.0)
        leases.record_calls(s.connection(), [_call("i4", "a")], now=4.0)  # once
        assert ledger.remaining(s, BUYER, 7) == 97
        assert leases.sync(s.connection(), ["a"], now=4.0) == {}  # settled: not open
        # written below the ORM: read back through it as the ORM writes them
        stamp = s.scalar(select(Usage.created_at).where(Usage.id == "i1"))
        assert isinstance(stamp, datetime)
        assert abs(stamp.replace(tzinfo=None) - datetime.now(UTC).replace(tzinfo=None)).seconds < 60
        assert s.scalar(select(Usage.latency_ms).where(Usage.id == "i1")) == 1.0
        rows = s.execute(select(Usage.status, Usage.refunded)).all()
        assert sorted(rows) == [("failed", True), ("ok", False), ("ok", False), ("ok", False)]


def test_silent_leases_are_swept_and_recalls_reach_their_holder(sessions):
    with sessions() as s, s.begin():
        ledger.credit(s, _purchase(calls=100))
        _lease(s, "a", want=10, holder="w1")  # heartbeat at t=1
        _lease(s, "b", want=10, holder="w2")
    with sessions() as s, s.begin():
        conn = s.connection()
        assert leases.sync(conn, ["b"], now=50.0) == {"b": False}
        assert leases.stale_leases(conn, older_than=20.0) == ["a"]
        assert leases.recall(conn, BUYER, 7, holder="w1") == 1  # w2's lease, not its own
        assert leases.sync(conn, ["b"], now=50.0) == {"b": True}  # w2 learns it
        assert leases.settle(conn, "a", now=51.0) == 10
        assert leases.sync(conn, ["a", "b"], now=52.0) == {"b": True}  # a is closed
        assert ledger.remaining(s, BUYER, 7) == 100


def test_a_huge_purchase_is_recorded_but_not_credited(sessions):
    with sessions() as s, s.begin():
        assert ledger.credit(s, _purchase(calls=10**30, amount=10**30))
        assert ledger.remaining(s, "0x" + "bb" * 20, 7) == 0


def test_credits_never_overflow_however_many_capped_purchases_pile_up(sessions):
    # 4,612 purchases of the contract's cap (10^15) on one model would pass 2^62; BIGINT
    # overflow would have failed every indexer batch from there on
    per = ledger.MAX_CREDITED_CALLS
    fill = ledger.MAX_CREDIT_TOTAL // per
    with sessions() as s, s.begin():
        ledger.credit_many(s, [_purchase(tx_hash=f"0x{i:064x}", calls=per) for i in range(fill)])
        held = ledger.remaining(s, "0x" + "bb" * 20, 7)
        assert held == fill * per <= ledger.MAX_CREDIT_TOTAL
        # the next one would pass the bound: recorded, credited nothing, nothing fails
        assert ledger.credit(s, _purchase(tx_hash="0x" + "ee" * 32, calls=per))
        assert ledger.remaining(s, "0x" + "bb" * 20, 7) == held
        refused = s.scalars(select(Purchase).where(Purchase.tx_hash == "0x" + "ee" * 32)).one()
        assert (refused.state, refused.calls) == ("too_large", 0)
        # a small one that fits still counts
        room = ledger.MAX_CREDIT_TOTAL - held
        assert ledger.credit(s, _purchase(tx_hash="0x" + "ef" * 32, calls=room))
        assert ledger.remaining(s, "0x" + "bb" * 20, 7) == ledger.MAX_CREDIT_TOTAL
