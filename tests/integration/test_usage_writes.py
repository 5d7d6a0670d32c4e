"""The usage writer on both databases: one statement per write (on SQLite, up to its
parameter limit), and the rows stored as the ORM reads them; the batch builder takes them back (on
SQLite as one JSON text) into a batch whose proofs lead to its root.

Why one statement: a statement per row (executemany) lets go of the GIL and takes it
back once per row. Under load every take waits behind the worker's request threads (up
to 5 ms each) while the write transaction, and on SQLite the database's write lock,
stays open: a 100-row write beside 8 busy threads took 3.4 s that way, 0.18 s as one
statement (bench notes in the README)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event

from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import ReceiptBatch, Usage
from marketplace.usage import batches, proofs
from marketplace.usage.merkle import process_proof
from marketplace.usage.receipts import Domain, Receipt
from marketplace.usage.records import UsageRecord, write_usage

GATEWAY = "0x" + "ab" * 20
BUYER = "0x" + "44" * 20


def served(i: int, *, receipt: bool = True, failed: bool = False) -> UsageRecord:
    when = datetime(2026, 12, 2, 12, 0, 0, 123456, tzinfo=UTC) + timedelta(seconds=i)
    r = Receipt(
        GATEWAY, f"{i:032x}", i, 7, "0x" + "11" * 32, f"0x{i:064x}", "0x" + "33" * 32,
        BUYER, 2**200 + i, "prepaid", 1_800_000_000 + i,
    )  # fmt: skip
    return UsageRecord(
        f"{i:032x}", "key1", BUYER, 7, "failed" if failed else "ok", "lease1",
        "model_failed" if failed else None, 1.5 + i, True, failed, when,
        r if receipt and not failed else None,
    )  # fmt: skip


def test_a_write_is_one_statement_and_stores_what_the_orm_reads(database: str):
    engine = make_engine(database)
    statements: list[tuple[str, bool]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if " INTO " in f" {statement.upper()}" and "INSERT" in statement.upper():
            statements.append((statement.upper().split("INSERT INTO ")[1].split()[0].lower(), many))

    rows = [served(i, failed=i % 50 == 3) for i in range(500)]
    with engine.begin() as conn:
        assert write_usage(conn, rows) == 500
    assert statements == [("usage", False)]  # receipts in their calls' rows

    # written again with 100 new ones: only those count, and no receipt is doubled
    statements.clear()
    with engine.begin() as conn:
        assert write_usage(conn, rows[400:] + [served(i) for i in range(500, 600)]) == 100
    assert statements == [("usage", False)]

    with session_factory(engine)() as s:
        assert s.query(Usage).count() == 600
        assert s.query(Usage).filter(Usage.gateway.is_not(None)).count() == 600 - 10
        failed = s.query(Usage).filter(Usage.status == "failed").all()
        assert len(failed) == 10  # no receipt, and not one field of one
        assert all(proofs.receipt_row(s, f.id) is None for f in failed)
        assert {(f.gateway, f.sequence, f.price, f.method, f.time) for f in failed} == {
            (None, None, None, None, None)
        }
        usage = s.get(Usage, f"{3:032x}")
        assert usage is not None
        assert (usage.status, usage.error, usage.charged, usage.refunded) == (
            "failed", "model_failed", True, True,
        )  # fmt: skip
        assert (usage.model_id, usage.lease_id, usage.latency_ms) == (7, "lease1", 4.5)
        stored = usage.created_at  # SQLite gives it back naive (UTC)
        stored = stored.replace(tzinfo=UTC) if stored.tzinfo is None else stored
        assert stored == rows[3].created_at
        for i in (0, 499, 599):
            row = proofs.receipt_row(s, f"{i:032x}")
            assert row is not None
            expected = served(i).receipt
            assert expected is not None
            assert proofs.to_receipt(row) == expected
            assert row.batch_id is None

    # written before the gateway had an open batch: the first batch closed adopts them
    # (failed calls have no receipt), and each proves into its root
    domain = Domain(31337, "0x" + "cd" * 20)
    batches.reserve_sequences(engine, GATEWAY, 1000, domain)  # opens the gateway's batch
    first = batches.build_batch(engine, GATEWAY, 10_000, domain, time.time())
    assert first is not None
    taken = [i for i in range(600) if i % 50 != 3 or i >= 500]
    # written after the close: into the next open batch, never the closed one
    with engine.begin() as conn:
        assert write_usage(conn, [served(i) for i in range(600, 610)]) == 10
    second = batches.build_batch(engine, GATEWAY, 10_000, domain, time.time())
    assert second is not None and second > first
    assert batches.build_batch(engine, GATEWAY, 10_000, domain, time.time()) is None  # none waits
    with session_factory(engine)() as s:
        for batch_id, members in ((first, taken), (second, list(range(600, 610)))):
            batch = s.get(ReceiptBatch, batch_id)
            assert batch is not None and batch.root is not None and batch.state == "built"
            assert (batch.count, batch.first_sequence, batch.last_sequence) == (
                len(members), members[0], members[-1],
            )  # fmt: skip
            for i in (members[0], members[len(members) // 2], members[-1]):
                receipt = served(i).receipt
                assert receipt is not None
                proof = proofs.proof(s, batch, receipt.inference_id, domain)
                assert "0x" + process_proof(receipt.leaf(domain), proof).hex() == batch.root
    engine.dispose()


def test_a_write_past_sqlites_parameter_limit_is_cut_and_loses_nothing(sqlite_url: str):
    """SQLite binds every value of a write as a parameter, up to its limit (32,766 by
    default; lower in some builds), in statements of a power of two rows (padded with
    rows of NULLs, which are skipped): a bigger write goes as several statements in the
    same transaction, every row stored once, in the gateway's open batch."""
    engine = make_engine(sqlite_url)
    rows_in: list[int] = []
    width = 19  # a receipted row's columns

    @event.listens_for(engine, "connect")
    def _small(dbapi: Any, record: Any) -> None:
        dbapi.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 99)  # 5 rows fit: 4 a statement

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if statement.upper().startswith("INSERT INTO USAGE"):
            rows_in.append(len(params) // width)

    domain = Domain(31337, "0x" + "cd" * 20)
    batches.reserve_sequences(engine, GATEWAY, 1000, domain)  # opens the gateway's batch
    rows = [served(i, failed=i == 5) for i in range(11)]
    with engine.begin() as conn:
        assert write_usage(conn, rows[:6]) == 6
    assert rows_in == [4, 2]
    rows_in.clear()
    with engine.begin() as conn:  # again, with 5 new ones: only those count
        assert write_usage(conn, rows) == 5
    assert rows_in == [4, 4, 4]  # 4 + 4 + 3, the last padded
    with session_factory(engine)() as s:
        stored = {u.id: u for u in s.query(Usage)}
        assert len(stored) == 11
        for i, row in enumerate(rows):
            usage = stored[row.id]
            assert (usage.latency_ms, usage.status) == (row.latency_ms, row.status)
            if i == 5:
                assert (usage.gateway, usage.batch_id) == (None, None)
            else:
                got = proofs.receipt_row(s, row.id)
                assert got is not None and proofs.to_receipt(got) == row.receipt
                assert usage.batch_id is not None  # the open batch
        assert len({u.batch_id for u in stored.values() if u.gateway}) == 1
    engine.dispose()


def test_a_batch_over_its_size_is_closed_as_several(database: str):
    """A builder away for a while finds more than a batch's size waiting: they close as
    batches of at most that size, in sequence order, each proving into its own root and
    found as its receipts' batch; the close rewrites no usage row (it cuts the batch by
    sequence: moving rows cost a new version of each, under the lock writers wait for)."""
    engine = make_engine(database)
    domain = Domain(31337, "0x" + "cd" * 20)
    batches.reserve_sequences(engine, GATEWAY, 1000, domain)
    with engine.begin() as conn:
        assert write_usage(conn, [served(i) for i in range(25)]) == 25
    rewrites: list[int] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if statement.upper().startswith("UPDATE USAGE") and cursor.rowcount:
            rewrites.append(cursor.rowcount)

    closed = batches.close_open(engine, GATEWAY, 10, time.time())
    assert len(closed) == 3 and closed == sorted(closed)
    assert rewrites == []
    assert batches.build_closed(engine, GATEWAY, domain) == 3
    with session_factory(engine)() as s:
        for batch_id, members in zip(
            closed, (range(10), range(10, 20), range(20, 25)), strict=True
        ):
            batch = s.get(ReceiptBatch, batch_id)
            assert batch is not None and batch.state == "built" and batch.root is not None
            assert (batch.count, batch.first_sequence, batch.last_sequence) == (
                len(members), members[0], members[-1],
            )  # fmt: skip
            for i in members:
                receipt = served(i).receipt
                assert receipt is not None
                row = proofs.receipt_row(s, receipt.inference_id)
                assert row is not None and proofs.batch_row(s, row) == batch
                proof = proofs.proof(s, batch, receipt.inference_id, domain)
                assert "0x" + process_proof(receipt.leaf(domain), proof).hex() == batch.root
    assert batches.unbatched(engine, GATEWAY, 10) == (0, None)
    with engine.begin() as conn:  # the next receipts go into the next open batch
        assert write_usage(conn, [served(i) for i in range(25, 30)]) == 5
    after = batches.build_batch(engine, GATEWAY, 10, domain, time.time())
    with session_factory(engine)() as s:
        batch = s.get(ReceiptBatch, after)
        assert batch is not None and (batch.count, batch.first_sequence) == (5, 25)
        row = proofs.receipt_row(s, f"{27:032x}")
        assert row is not None and proofs.batch_row(s, row) == batch
    engine.dispose()


def test_rows_without_receipts_are_written_with_none_of_a_receipts_fields(database: str):
    """Receipts off: the rows go by the usage columns alone, hold no receipt field and
    no batch, and nothing waits to be batched."""
    engine = make_engine(database)
    batches.reserve_sequences(engine, GATEWAY, 10, Domain(31337, "0x" + "cd" * 20))
    with engine.begin() as conn:
        assert write_usage(conn, [served(i, receipt=False) for i in range(50)]) == 50
        assert write_usage(conn, [served(i, receipt=False) for i in range(40, 60)]) == 10
    with session_factory(engine)() as s:
        rows = s.query(Usage).all()
        assert len(rows) == 60 and all(r.status == "ok" for r in rows)
        assert {(r.gateway, r.sequence, r.price, r.batch_id) for r in rows} == {
            (None, None, None, None)
        }
        assert all(proofs.receipt_row(s, r.id) is None for r in rows)
    assert batches.unbatched(engine, GATEWAY, 10) == (0, None)
    engine.dispose()
