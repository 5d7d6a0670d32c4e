"""The lease SQL: a block of a credit's calls taken into a lease in one conditional
UPDATE, finished calls written and counted against their leases once, heartbeats,
settling (unspent calls back to the credit, once), sweeping and recalling. Core
statements throughout: the ORM's bulk UPDATE path costs ~10x the statement itself."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import case, insert, select, update
from sqlalchemy.engine import Connection

from marketplace.db.engine import core_table
from marketplace.db.tables import Credit, CreditLease
from marketplace.usage.records import UsageRecord, write_usage

_credits, _leases = core_table(Credit), core_table(CreditLease)


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


def record_calls(conn: Connection, calls: Sequence[UsageRecord], now: float) -> None:
    """Write finished calls' usage rows and count the
    charged, unrefunded ones against their leases, once: a retry after a commit whose
    answer was lost finds the rows written and counts nothing (the insert's row count).
    A call whose lease was already settled (its unspent calls, this one among them,
    went back to the credit) is charged to the credit directly, so no call is ever free
    or paid twice."""
    if not calls:
        return
    served: dict[str, list[UsageRecord]] = {}
    others = []
    for call in calls:
        if call.charged and not call.refunded:
            served.setdefault(str(call.lease_id), []).append(call)
        else:
            others.append(call)
    if others:
        write_usage(conn, others)
    for lease_id, rows in sorted(served.items()):
        new = write_usage(conn, rows)
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
