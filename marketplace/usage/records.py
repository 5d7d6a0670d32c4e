"""Usage rows: one per paid call, whatever paid for it, as a typed record, and the one
writer that puts them in the database at the driver level."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import orjson
from sqlalchemy.engine import Connection

from marketplace.db.tables import UINT256_DIGITS
from marketplace.usage.receipts import Receipt


class UsageRecord(NamedTuple):
    """One finished paid call, as the `usage` table stores it. A NamedTuple: built on
    every paid call, and handed to the driver as the row it is."""

    id: str  # the inference id
    key_id: str
    buyer: str
    model_id: int
    status: str  # "ok" or "failed"
    lease_id: str | None  # the payment's own reference (prepaid: the lease it came from)
    error: str | None  # the stable code of what failed
    latency_ms: float
    charged: bool
    refunded: bool
    created_at: datetime
    receipt: Receipt | None = None  # a served call's usage receipt (when receipts are on)


USAGE_COLUMNS = UsageRecord._fields[:-1]
RECEIPT_COLUMNS = Receipt._fields
_CHARGED = USAGE_COLUMNS.index("charged")
_USAGE_SQL = ", ".join(USAGE_COLUMNS)
# PostgreSQL: one statement over the rows as one JSON text (orjson writes it in C; the
# server parses it in C). psycopg's per-row executemany, or its array adaptation, cost
# 10-15 us a row in Python.
_USAGE_PG = (
    f"INSERT INTO usage ({_USAGE_SQL}) SELECT {_USAGE_SQL}"  # noqa: S608 (constants only)
    " FROM json_populate_recordset(NULL::usage, %s::json) ON CONFLICT (id) DO NOTHING"
)


def _from_json_sqlite(table: str, columns: Sequence[str], key: str) -> str:
    # SQLite: one statement over the rows as one JSON array of arrays. executemany
    # steps once per row, letting go of the GIL and taking it back each time: under
    # load every take waits behind the request threads (up to 5 ms each), with the
    # write lock held all the while.
    # json_extract, not ->> (SQLite 3.38+): the sqlite3 a Python is built with may be older
    values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values}"  # noqa: S608 (constants)
        f" FROM json_each(?) WHERE true ON CONFLICT ({key}) DO NOTHING"  # WHERE: the upsert
    )  # clause is not read as a join's ON


_USAGE_SQLITE = _from_json_sqlite("usage", USAGE_COLUMNS, "id")
_RECEIPTS_SQL = ", ".join(RECEIPT_COLUMNS)
_RECEIPTS_PG = (
    f"INSERT INTO usage_receipts ({_RECEIPTS_SQL}) SELECT {_RECEIPTS_SQL}"  # noqa: S608
    " FROM json_populate_recordset(NULL::usage_receipts, %s::json)"
    " ON CONFLICT (inference_id) DO NOTHING"
)
_RECEIPTS_SQLITE = _from_json_sqlite("usage_receipts", RECEIPT_COLUMNS, "inference_id")
_PRICE = RECEIPT_COLUMNS.index("price")


def write_usage(conn: Connection, records: Sequence[UsageRecord]) -> int:
    """Insert usage rows, and the receipts of the served calls among them, at the driver
    level; returns how many usage rows were new (a row already written, by id, is
    skipped, and so is its receipt). The caller's transaction holds both: a call is
    recorded with its receipt or not at all.

    A row per paid call: SQLAlchemy's per-row parameter processing cost ~4x the
    driver's own work (measured: ~9 us against ~2 us a row on SQLite), so rows go to
    the driver as they are stored (SQLite: SQLAlchemy's DATETIME text and 0/1)."""
    receipts = [r.receipt for r in records if r.receipt is not None]
    if conn.dialect.name == "sqlite":
        rows = [
            (
                *record[:_CHARGED],
                int(record.charged),
                int(record.refunded),
                # "YYYY-MM-DD HH:MM:SS.ffffff" (UTC), 4x faster than strftime
                record.created_at.isoformat(" ", "microseconds")[:26],
            )
            for record in records
        ]
        new = int(conn.exec_driver_sql(_USAGE_SQLITE, (orjson.dumps(rows).decode(),)).rowcount)
        if receipts:
            # the price as Uint256 stores it on SQLite: zero-padded decimal text
            padded = [
                (*r[:_PRICE], str(r.price).zfill(UINT256_DIGITS), *r[_PRICE + 1 :])
                for r in receipts
            ]
            conn.exec_driver_sql(_RECEIPTS_SQLITE, (orjson.dumps(padded).decode(),))
        return new
    text = orjson.dumps([dict(zip(USAGE_COLUMNS, record, strict=False)) for record in records])
    new = int(conn.exec_driver_sql(_USAGE_PG, (text.decode(),)).rowcount)
    if receipts:
        # the price as text: orjson writes no integer above 64 bits (numeric parses it)
        docs = [{**r._asdict(), "price": str(r.price)} for r in receipts]
        conn.exec_driver_sql(_RECEIPTS_PG, (orjson.dumps(docs).decode(),))
    return new
