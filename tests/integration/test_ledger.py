"""The ledger's exactly-once rules on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from marketplace import db, ledger


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request):  # type: ignore[no-untyped-def]
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return db.session_factory(db.make_engine(url))


def _purchase(**kw):  # type: ignore[no-untyped-def]
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
    return {**base, **kw}


def test_credit_once_revoke_once_and_credit_again_when_re_mined(sessions):
    buyer = "0x" + "bb" * 20
    with sessions() as s, s.begin():
        assert ledger.credit(s, **_purchase())
        assert not ledger.credit(s, **_purchase(source="receipt"))  # the other path: no-op
        assert ledger.remaining(s, buyer, 7) == 5
        assert ledger.revoke(s, "0x" + "aa" * 32, 3)
        assert not ledger.revoke(s, "0x" + "aa" * 32, 3)
        assert ledger.remaining(s, buyer, 7) == 0
        # the same transaction mined again in the new canonical chain
        assert ledger.credit(s, **_purchase(block_number=12, block_hash="0x" + "dd" * 32))
        assert not ledger.credit(s, **_purchase(block_number=12, block_hash="0x" + "dd" * 32))
        assert ledger.remaining(s, buyer, 7) == 5


def test_consume_and_refund(sessions):
    buyer = "0x" + "bb" * 20
    with sessions() as s, s.begin():
        ledger.credit(s, **_purchase(calls=2))
    with sessions() as s, s.begin():
        first, left = ledger.consume(s, key_id="k", buyer=buyer, model_id=7)
        assert left == 1
        _, left = ledger.consume(s, key_id="k", buyer=buyer, model_id=7)
        assert left == 0
        with pytest.raises(ledger.NoCredit):
            ledger.consume(s, key_id="k", buyer=buyer, model_id=7)
    with sessions() as s, s.begin():
        assert ledger.refund(s, first, "inference_failed", 1.0) == 1
        assert ledger.refund(s, first, "inference_failed", 1.0) is None  # once
        assert ledger.remaining(s, buyer, 7) == 1


def test_a_huge_purchase_is_recorded_but_not_credited(sessions):
    with sessions() as s, s.begin():
        assert ledger.credit(s, **_purchase(calls=10**30, amount=10**30))
        assert ledger.remaining(s, "0x" + "bb" * 20, 7) == 0
