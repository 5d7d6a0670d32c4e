"""Usage rows: one per paid call, whatever paid for it, with a served call's receipt, as
a typed record, and the one writer that puts them in the database at the driver level."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from itertools import chain
from typing import NamedTuple, cast

import orjson
from sqlalchemy import String
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from marketplace.db.tables import UINT256_DIGITS, Usage
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
# the receipt's own fields, stored in its call's usage row (its inference id, model id
# and buyer are the row's id, model_id and buyer)
RECEIPT_COLUMNS = tuple(
    f for f in Receipt._fields if f not in ("inference_id", "model_id", "buyer")
)
_RECEIPT_FIELDS = [Receipt._fields.index(name) for name in RECEIPT_COLUMNS]
_NO_RECEIPT = (None,) * len(RECEIPT_COLUMNS)
_CHARGED = USAGE_COLUMNS.index("charged")
_PRICE = RECEIPT_COLUMNS.index("price")
_COLUMNS = (*USAGE_COLUMNS, *RECEIPT_COLUMNS)
_SQL = ", ".join(_COLUMNS)


# PostgreSQL: one statement over the rows as one JSON text (orjson writes it in C; the
# server parses it in C). psycopg's per-row executemany, or its array adaptation, cost
# 10-15 us a row in Python. Each row is a JSON array, read by position as its column's
# type: objects (json_populate_recordset) cost 10.4 against 6.8 us a receipted row in
# Python and 22 against 18 in PostgreSQL (the keys built, written and matched each
# time). jsonb, parsed once: json's ->> parses an element again for each column.
def _positional(columns: Sequence[str]) -> str:
    """Element i of each row as column i's type: text for strings (an explicit cast to
    varchar(n) would cut a longer value; the insert's own cast refuses it)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    types = {
        c.name: "text" if isinstance(c.type, String) else c.type.compile(dialect=dialect)
        for c in Usage.__table__.c
    }
    return ", ".join(f"(r->>{i})::{types[name]}" for i, name in enumerate(columns))


_USAGE_PG = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)})"  # noqa: S608 (constants only)
    f" SELECT {_positional(USAGE_COLUMNS)} FROM jsonb_array_elements(%s::jsonb) AS r"
    " ON CONFLICT (id) DO NOTHING"
)
# With receipts, each goes into its gateway's open batch, read under a KEY SHARE lock on
# the gateway's row: a builder closing that batch (FOR UPDATE) waits for this write to
# commit, and a write after the close reads the next batch. Writers do not wait for one
# another, nor for a worker taking sequence numbers (an update of no key column). A row
# with no receipt is shorter: its receipt's columns read as NULL.
_RECEIPTS_PG = (
    "WITH open AS (SELECT gateway, open_batch FROM receipt_sequences"  # noqa: S608 (constants)
    " WHERE gateway = ANY(%s) FOR KEY SHARE)"
    f" INSERT INTO usage ({_SQL}, batch_id) SELECT {_positional(_COLUMNS)}, open.open_batch"
    " FROM jsonb_array_elements(%s::jsonb) AS r"
    f" LEFT JOIN open ON open.gateway = r->>{_COLUMNS.index('gateway')}"
    " ON CONFLICT (id) DO NOTHING"
)


# SQLite: one statement with every row's values bound as parameters (multi-row VALUES).
# executemany steps once per row, letting go of the GIL and taking it back each time:
# under load every take waits behind the request threads (up to 5 ms each), with the
# write lock held all the while. Rows as one JSON text (json_each) cost more: SQLite 3.40
# parses a row's text again for each of its columns' json_extract (a receipted row, 20
# columns: 30 against 17.5 us a row bound, bench.receipts). The rows are padded to a
# power of two with NULL rows the WHERE drops, so a few statements serve every size
# and stay prepared (sqlite3 keeps 128 a connection; preparing one of 100 receipted
# rows takes ~0.5-1 ms; with sizes 1-150 at random, 23 against 26.5 us a row unpadded).
# The open batch is read inside the write transaction (BEGIN IMMEDIATE: a close waits).
@functools.lru_cache(maxsize=64)
def _insert_sqlite(rows: int, receipts: bool) -> str:
    """The INSERT of up to `rows` rows (rows of NULLs are skipped): with their receipts'
    columns and open batch, or the usage columns alone."""
    names = _COLUMNS if receipts else USAGE_COLUMNS
    values = ", ".join([f"({', '.join('?' * len(names))})"] * rows)
    picked = ", ".join(f"column{i}" for i in range(1, len(names) + 1))
    if receipts:
        gateway = f"column{_COLUMNS.index('gateway') + 1}"
        picked += f", (SELECT open_batch FROM receipt_sequences WHERE gateway = {gateway})"  # noqa: S608
    return (
        f"INSERT INTO usage ({', '.join(names)}{', batch_id' if receipts else ''})"  # noqa: S608
        f" SELECT {picked} FROM (VALUES {values}) WHERE column1 IS NOT NULL"
        " ON CONFLICT (id) DO NOTHING"
    )


def _receipt_fields(receipt: Receipt | None) -> tuple[object, ...]:
    if receipt is None:
        return _NO_RECEIPT
    return tuple(receipt[i] for i in _RECEIPT_FIELDS)


def write_usage(conn: Connection, records: Sequence[UsageRecord]) -> int:
    """Insert usage rows, each served call's receipt in its row (in its gateway's open
    batch), at the driver level; returns how many were new (a row already written, by
    id, is skipped). A call is recorded with its receipt or not at all.

    A row per paid call: SQLAlchemy's per-row parameter processing cost ~4x the
    driver's own work (measured: ~9 us against ~2 us a row on SQLite), so rows go to
    the driver as they are stored (SQLite: SQLAlchemy's DATETIME text and 0/1)."""
    if conn.dialect.name != "sqlite":
        return _write_postgresql(conn, records)
    receipts = any(record.receipt is not None for record in records)
    rows = []
    for record in records:
        row: tuple[object, ...] = (
            *record[:_CHARGED],
            int(record.charged),
            int(record.refunded),
            # "YYYY-MM-DD HH:MM:SS.ffffff" (UTC), 4x faster than strftime
            record.created_at.isoformat(" ", "microseconds")[:26],
        )
        if receipts:
            own = _receipt_fields(record.receipt)
            if record.receipt is not None:  # the price as Uint256 stores it: padded
                price = str(own[_PRICE]).zfill(UINT256_DIGITS)
                own = (*own[:_PRICE], price, *own[_PRICE + 1 :])
            row += own
        rows.append(row)
    width = len(_COLUMNS if receipts else USAGE_COLUMNS)
    # as many rows a statement as SQLite takes parameters (32,766 by default), in a
    # power of two
    driver = cast(sqlite3.Connection, conn.connection.driver_connection)
    most = max(driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width, 1)
    step = 1 << (most.bit_length() - 1)
    new = 0
    for i in range(0, len(rows), step):
        chunk = rows[i : i + step]
        size = 1 << (len(chunk) - 1).bit_length()
        padding = (None,) * (width * (size - len(chunk)))
        params = (*chain.from_iterable(chunk), *padding)
        new += conn.exec_driver_sql(_insert_sqlite(size, receipts), params).rowcount
    return new


def _write_postgresql(conn: Connection, records: Sequence[UsageRecord]) -> int:
    rows: list[tuple[object, ...]] = []
    gateways: set[str] = set()
    for record in records:
        if record.receipt is None:
            rows.append(record[:-1])
            continue
        own = _receipt_fields(record.receipt)
        # the price as text: orjson writes no integer above 64 bits (numeric parses it)
        rows.append((*record[:-1], *own[:_PRICE], str(own[_PRICE]), *own[_PRICE + 1 :]))
        gateways.add(record.receipt.gateway)
    text = orjson.dumps(rows).decode()
    if gateways:
        return int(conn.exec_driver_sql(_RECEIPTS_PG, (sorted(gateways), text)).rowcount)
    return int(conn.exec_driver_sql(_USAGE_PG, (text,)).rowcount)
