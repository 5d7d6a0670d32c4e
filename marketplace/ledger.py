"""Credits: a purchase credited exactly once, whichever path sees it first (the indexer
or a posted receipt), and taken back once if a reorg orphans it."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Table, case, func, insert, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from marketplace import db
from marketplace.models import Credit, CreditLease, Purchase, Usage

# A purchase of more calls than this is recorded but not credited: credits are 64-bit.
MAX_CREDITED_CALLS = 10**15
# Calls one buyer may ever hold on one model (purchased, summed): far past any real use,
# and under 2^63, so the BIGINT columns can never overflow however many capped purchases
# pile up (an overflow would fail every indexer batch from there on).
MAX_CREDIT_TOTAL = 2**62


def credit(
    session: Session,
    *,
    tx_hash: str,
    log_index: int,
    buyer: str,
    model_id: int,
    calls: int,
    amount: int,
    fee: int,
    block_number: int,
    block_hash: str,
    source: str,
) -> bool:
    """Record a purchase and add its calls to (buyer, model). Returns False, changing
    nothing, when this (tx_hash, log_index) was already recorded."""
    purchase = {
        "tx_hash": tx_hash,
        "log_index": log_index,
        "buyer": buyer,
        "model_id": model_id,
        "calls": calls,
        "amount": amount,
        "fee": fee,
        "block_number": block_number,
        "block_hash": block_hash,
        "source": source,
    }
    return credit_many(session, [purchase]) == 1


def credit_many(session: Session, purchases: list[dict[str, Any]]) -> int:
    """`credit` for many purchases in a few statements (the indexer's catch-up path).
    Each dict has credit's keyword arguments. Returns how many were newly recorded (or,
    orphaned by a reorg and mined again, credited again)."""
    if not purchases:
        return 0
    rows = []
    for p in purchases:
        calls = int(p["calls"])
        credited = calls if 0 < calls <= MAX_CREDITED_CALLS else 0
        rows.append(
            {
                "tx_hash": p["tx_hash"].lower(),
                "log_index": p["log_index"],
                "buyer": p["buyer"].lower(),
                "model_id": p["model_id"],
                "calls": credited,
                "amount": p["amount"],
                "fee": p["fee"],
                "block_number": p["block_number"],
                "block_hash": p["block_hash"].lower(),
                "state": "credited" if credited else "too_large",
                "source": p["source"],
            }
        )
    inserted = session.execute(
        db.insert(session, Purchase)
        .on_conflict_do_nothing(index_elements=["tx_hash", "log_index"])
        .returning(
            Purchase.tx_hash,
            Purchase.log_index,
            Purchase.buyer,
            Purchase.model_id,
            Purchase.calls,
            sort_by_parameter_order=True,
        ),
        rows,
    ).all()
    new = {(r[0], r[1]) for r in inserted}
    totals: dict[tuple[str, int], int] = {}
    for _tx, _log, buyer, model_id, calls in inserted:
        if calls:
            totals[(buyer, model_id)] = totals.get((buyer, model_id), 0) + int(calls)
    # seen before: only purchases orphaned by a reorg and mined again count again
    again = 0
    for row in rows:
        if (row["tx_hash"], row["log_index"]) not in new:
            revived = session.execute(
                update(Purchase)
                .where(
                    Purchase.tx_hash == row["tx_hash"],
                    Purchase.log_index == row["log_index"],
                    Purchase.state == "orphaned",
                )
                .values(
                    state="credited", block_number=row["block_number"], block_hash=row["block_hash"]
                )
                .returning(Purchase.calls)
            ).scalar_one_or_none()
            if revived is not None:
                again += 1
                key = (row["buyer"], row["model_id"])
                totals[key] = totals.get(key, 0) + int(revived)
    _refuse_overflows(session, inserted, totals)
    if totals:
        stmt = db.insert(session, Credit)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["buyer", "model_id"],
                set_={
                    "remaining": Credit.remaining + stmt.excluded.remaining,
                    "purchased": Credit.purchased + stmt.excluded.purchased,
                },
            ),
            [
                {"buyer": b, "model_id": m, "remaining": n, "purchased": n}
                for (b, m), n in sorted(totals.items())
            ],
        )
    return len(new) + again


def _refuse_overflows(session: Session, inserted: Any, totals: dict[tuple[str, int], int]) -> None:
    """Drop from `totals` the credits these purchases would push past MAX_CREDIT_TOTAL,
    and mark their new purchases `too_large` (recorded, credited nothing)."""
    held = dict(
        ((buyer, model_id), int(purchased))
        for buyer, model_id, purchased in session.execute(
            select(Credit.buyer, Credit.model_id, Credit.purchased).where(
                tuple_(Credit.buyer, Credit.model_id).in_(list(totals))
            )
        )
    )
    for key in [k for k, n in totals.items() if held.get(k, 0) + n > MAX_CREDIT_TOTAL]:
        del totals[key]
        for tx_hash, log_index, buyer, model_id, _calls in inserted:
            if (buyer, model_id) == key:
                session.execute(
                    update(Purchase)
                    .where(Purchase.tx_hash == tx_hash, Purchase.log_index == log_index)
                    .values(state="too_large", calls=0)
                )


def revoke(session: Session, tx_hash: str, log_index: int) -> bool:
    """Take back an orphaned purchase's calls once; False if there was nothing to take."""
    purchase = session.execute(
        update(Purchase)
        .where(
            Purchase.tx_hash == tx_hash.lower(),
            Purchase.log_index == log_index,
            Purchase.state == "credited",
        )
        .values(state="orphaned")
        .returning(Purchase.buyer, Purchase.model_id, Purchase.calls)
    ).one_or_none()
    if purchase is None:
        return False
    buyer, model_id, calls = purchase
    session.execute(
        update(Credit)
        .where(Credit.buyer == buyer, Credit.model_id == model_id)
        .values(remaining=Credit.remaining - calls, purchased=Credit.purchased - calls)
    )
    return True


def remaining(session: Session, buyer: str, model_id: int) -> int:
    """Calls `buyer` may still make on `model_id`: the credit and its open leases (calls
    served in the last moments may not be counted yet)."""
    return remaining_by_model(session, buyer).get(model_id, 0)


def remaining_by_model(session: Session, buyer: str) -> dict[int, int]:
    """`remaining` for each model `buyer` holds credits on."""
    buyer = buyer.lower()
    totals = {
        int(m): int(r)
        for m, r in session.execute(
            select(Credit.model_id, Credit.remaining).where(Credit.buyer == buyer)
        )
    }
    leased = session.execute(
        select(CreditLease.model_id, func.sum(CreditLease.granted - CreditLease.used))
        .where(CreditLease.buyer == buyer, CreditLease.settled_at.is_(None))
        .group_by(CreditLease.model_id)
    )
    for model_id, n in leased:
        totals[int(model_id)] = totals.get(int(model_id), 0) + int(n or 0)
    return totals


def _table(entity: Any) -> Table:
    table = entity.__table__
    assert isinstance(table, Table)
    return table


# Core statements throughout the paid path: the ORM's bulk UPDATE path costs ~10x the
# statement itself (measured: ~800 us against ~80 us on SQLite).
_credits, _leases, _usage = _table(Credit), _table(CreditLease), _table(Usage)


def lease(
    conn: Connection,
    *,
    lease_id: str,
    holder: str,
    buyer: str,
    model_id: int,
    want: int,
    now: float,
) -> tuple[int, int] | None:
    """Take up to `want` calls of (buyer, model) into a new lease, in one conditional
    UPDATE (never read, then write). Returns (granted, calls left outside leases), or
    None when there is nothing to take.

    Near the end of a credit the lease shrinks (a quarter of what is left, then single
    calls) so that few calls sit in one worker's lease while another has none."""
    rem = _credits.c.remaining
    grant = case(
        (rem >= 4 * want, want),
        (rem >= 8, rem // 4),
        else_=1,
    )
    row = conn.execute(
        update(_credits)
        .where(_credits.c.buyer == buyer.lower(), _credits.c.model_id == model_id, rem > 0)
        .values(remaining=rem - grant, last_lease=grant)
        .returning(_credits.c.last_lease, rem)
    ).one_or_none()
    if row is None:
        return None
    granted, left = int(row[0]), int(row[1])
    conn.execute(
        insert(_leases).values(
            id=lease_id,
            buyer=buyer.lower(),
            model_id=model_id,
            holder=holder,
            granted=granted,
            used=0,
            heartbeat_at=now,
            recall=False,
        )
    )
    return granted, left


# A finished call's usage row, as the tuple the paid path builds (cheaper than a dict).
USAGE_COLUMNS = (
    "id",
    "key_id",
    "buyer",
    "model_id",
    "status",
    "lease_id",
    "error",
    "latency_ms",
    "charged",
    "refunded",
    "created_at",
)
LEASE_ID = USAGE_COLUMNS.index("lease_id")
_CHARGED, _REFUNDED = USAGE_COLUMNS.index("charged"), USAGE_COLUMNS.index("refunded")
_CREATED = USAGE_COLUMNS.index("created_at")


_USAGE_SQL = ", ".join(USAGE_COLUMNS)
# PostgreSQL: one statement over the rows as one JSON text (orjson writes it in C; the
# server parses it in C). psycopg's per-row executemany, or its array adaptation, cost
# 10-15 us a row in Python.
_USAGE_PG = (
    f"INSERT INTO usage ({_USAGE_SQL}) SELECT {_USAGE_SQL}"  # noqa: S608 (constants only)
    " FROM json_populate_recordset(NULL::usage, %s::json) ON CONFLICT (id) DO NOTHING"
)
_USAGE_SQLITE = (
    f"INSERT INTO usage ({_USAGE_SQL}) VALUES ({', '.join('?' * len(USAGE_COLUMNS))})"  # noqa: S608
    " ON CONFLICT (id) DO NOTHING"
)


def _write_usage(conn: Connection, calls: list[tuple[Any, ...]]) -> int:
    """Insert usage rows at the driver level; returns how many were new.

    A row per paid call: SQLAlchemy's per-row parameter processing cost ~4x the
    driver's own work (measured: ~9 us against ~2 us a row on SQLite), so rows go to
    the driver as they are stored (SQLite: SQLAlchemy's DATETIME text and 0/1)."""
    if conn.dialect.name == "sqlite":
        rows = [
            (
                *call[:_CHARGED],
                int(call[_CHARGED]),
                int(call[_REFUNDED]),
                # "YYYY-MM-DD HH:MM:SS.ffffff" (UTC), 4x faster than strftime
                call[_CREATED].isoformat(" ", "microseconds")[:26],
            )
            for call in calls
        ]
        return int(conn.exec_driver_sql(_USAGE_SQLITE, rows).rowcount)
    text = orjson.dumps([dict(zip(USAGE_COLUMNS, call, strict=True)) for call in calls])
    return int(conn.exec_driver_sql(_USAGE_PG, (text.decode(),)).rowcount)


def record_calls(conn: Connection, calls: list[tuple[Any, ...]], now: float) -> None:
    """Write finished calls' usage rows (tuples in USAGE_COLUMNS order) and count the
    charged, unrefunded ones against their leases, once: a retry after a commit whose
    answer was lost finds the rows written and counts nothing (the insert's row count).
    A call whose lease was already settled (its unspent calls, this one among them,
    went back to the credit) is charged to the credit directly, so no call is ever free
    or paid twice."""
    if not calls:
        return
    served: dict[str, list[tuple[Any, ...]]] = {}
    others = []
    for call in calls:
        if call[_CHARGED] and not call[_REFUNDED]:
            served.setdefault(call[LEASE_ID], []).append(call)
        else:
            others.append(call)
    if others:
        _write_usage(conn, others)
    for lease_id, rows in sorted(served.items()):
        new = _write_usage(conn, rows)
        if not new:
            continue
        counted = conn.execute(
            update(_leases)
            .where(_leases.c.id == lease_id, _leases.c.settled_at.is_(None))
            .values(used=_leases.c.used + new, heartbeat_at=now)
            .returning(_leases.c.id)
        ).first()
        if counted is None:
            conn.execute(
                update(_leases).where(_leases.c.id == lease_id).values(used=_leases.c.used + new)
            )
            buyer, model_id = conn.execute(
                select(_leases.c.buyer, _leases.c.model_id).where(_leases.c.id == lease_id)
            ).one()
            conn.execute(
                update(_credits)
                .where(_credits.c.buyer == buyer, _credits.c.model_id == model_id)
                .values(remaining=_credits.c.remaining - new)
            )


def sync(conn: Connection, lease_ids: list[str], now: float) -> dict[str, bool]:
    """Say the holder of these leases is alive. Returns each still-open lease's recall
    flag (another worker asks for its calls); settled ones are missing."""
    if not lease_ids:
        return {}
    rows = conn.execute(
        update(_leases)
        .where(_leases.c.id.in_(lease_ids), _leases.c.settled_at.is_(None))
        .values(heartbeat_at=now)
        .returning(_leases.c.id, _leases.c.recall)
    ).all()
    return {lease_id: bool(recall) for lease_id, recall in rows}


def settle(conn: Connection, lease_id: str, now: float) -> int:
    """Close a lease and give its unspent calls back to the credit, once. Returns how
    many went back (0 when it was already settled)."""
    row = conn.execute(
        update(_leases)
        .where(_leases.c.id == lease_id, _leases.c.settled_at.is_(None))
        .values(settled_at=now)
        .returning(_leases.c.buyer, _leases.c.model_id, _leases.c.granted - _leases.c.used)
    ).one_or_none()
    if row is None:
        return 0
    buyer, model_id, unspent = row[0], row[1], int(row[2])
    if unspent:
        conn.execute(
            update(_credits)
            .where(_credits.c.buyer == buyer, _credits.c.model_id == model_id)
            .values(remaining=_credits.c.remaining + unspent)
        )
    return unspent


def stale_leases(conn: Connection, older_than: float) -> list[str]:
    """Open leases whose holder has not been heard from since `older_than`."""
    return list(
        conn.execute(
            select(_leases.c.id).where(
                _leases.c.settled_at.is_(None), _leases.c.heartbeat_at < older_than
            )
        ).scalars()
    )


def lock_leases(conn: Connection, lease_ids: list[str]) -> None:
    """Lock these lease rows in id order (PostgreSQL; SQLite's write lock is whole) so
    that transactions touching several leases never deadlock each other."""
    if lease_ids and conn.dialect.name != "sqlite":
        conn.execute(
            select(_leases.c.id)
            .where(_leases.c.id.in_(lease_ids))
            .order_by(_leases.c.id)
            .with_for_update()
        ).all()


def recall(conn: Connection, buyer: str, model_id: int, holder: str) -> int:
    """Ask other holders to give back their open leases on (buyer, model). Returns how
    many leases may still hold calls."""
    ids = list(
        conn.execute(
            select(_leases.c.id)
            .where(
                _leases.c.buyer == buyer.lower(),
                _leases.c.model_id == model_id,
                _leases.c.holder != holder,
                _leases.c.settled_at.is_(None),
                _leases.c.granted > _leases.c.used,
            )
            .order_by(_leases.c.id)
            .with_for_update()
        ).scalars()
    )
    if ids:
        conn.execute(update(_leases).where(_leases.c.id.in_(ids)).values(recall=True))
    return len(ids)
