"""Credits: a purchase credited exactly once, whichever path sees it first (the indexer
or a posted receipt), and taken back once if a reorg orphans it."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from marketplace.models import Credit, Purchase, Usage

# A purchase of more calls than this is recorded but not credited: credits are 64-bit.
MAX_CREDITED_CALLS = 10**15


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


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
        _insert(session, Purchase)
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
    if totals:
        stmt = _insert(session, Credit)
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
    """Calls `buyer` may still make on `model_id`."""
    value = session.execute(
        select(Credit.remaining).where(Credit.buyer == buyer.lower(), Credit.model_id == model_id)
    ).scalar_one_or_none()
    return int(value or 0)


def _table(entity: Any) -> Table:
    table = entity.__table__
    assert isinstance(table, Table)
    return table


def consume(
    session: Session | Connection, *, key_id: str, buyer: str, model_id: int
) -> tuple[str, int]:
    """Take one call of (buyer, model) in a single conditional UPDATE (never read, then
    write) and open its usage row. Returns (inference id, calls left); raises NoCredit
    when none is left.

    Core statements on the session's connection: the ORM's bulk UPDATE path costs ~10x
    the statement itself (measured: ~800 us against ~80 us on SQLite)."""
    conn = session.connection() if isinstance(session, Session) else session
    credits, usage = _table(Credit), _table(Usage)
    left = conn.execute(
        update(credits)
        .where(
            credits.c.buyer == buyer.lower(),
            credits.c.model_id == model_id,
            credits.c.remaining > 0,
        )
        .values(remaining=credits.c.remaining - 1)
        .returning(credits.c.remaining)
    ).scalar_one_or_none()
    if left is None:
        raise NoCredit(buyer, model_id)
    inference_id = secrets.token_hex(16)
    conn.execute(
        insert(usage).values(
            id=inference_id,
            key_id=key_id,
            buyer=buyer.lower(),
            model_id=model_id,
            status="running",
            charged=True,
            refunded=False,
            created_at=datetime.now(UTC),
        )
    )
    return inference_id, int(left)


def complete_many(session: Session, done: list[tuple[str, float]]) -> None:
    """Mark many calls served (inference id, latency ms), in one statement."""
    # Core UPDATE on the table (not the ORM entity): an executemany with its own WHERE
    table = Usage.__table__
    assert isinstance(table, Table)
    session.connection().execute(
        update(table)
        .where(table.c.id == bindparam("iid"), table.c.status == "running")
        .values(status="ok", latency_ms=bindparam("ms")),
        [{"iid": iid, "ms": ms} for iid, ms in done],
    )


def refund(session: Session, inference_id: str, error: str, latency_ms: float) -> int | None:
    """Give a failed call's credit back, once. Returns the calls left after the refund,
    or None when it was already refunded (or never charged)."""
    row = session.execute(
        update(Usage)
        .where(Usage.id == inference_id, Usage.charged.is_(True), Usage.refunded.is_(False))
        .values(status="failed", refunded=True, error=error[:64], latency_ms=latency_ms)
        .returning(Usage.buyer, Usage.model_id)
    ).one_or_none()
    if row is None:
        return None
    left = session.execute(
        update(Credit)
        .where(Credit.buyer == row[0], Credit.model_id == row[1])
        .values(remaining=Credit.remaining + 1)
        .returning(Credit.remaining)
    ).scalar_one()
    return int(left)


class NoCredit(Exception):
    """No call left for (buyer, model); the gateway turns it into a 402."""

    def __init__(self, buyer: str, model_id: int) -> None:
        super().__init__(f"{buyer} has no calls left on model {model_id}")
        self.buyer, self.model_id = buyer, model_id
