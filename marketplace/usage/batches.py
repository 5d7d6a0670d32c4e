"""Receipts and their batches in the database: sequence numbers taken in blocks, each
gateway's open batch that its receipts are written into, a batch closed and built (its
root fixed). A built batch's send and anchor are recorded in `sends`.

What is written when: a receipt in its call's usage row, in its gateway's open batch
(`records.write_usage`, under a lock a close waits for); the batch closed (the gateway's
next batch opened in the same transaction), then its root once computed; the batch's
transaction and block once the chain holds its root. A receipt is in exactly one batch
from the moment it is written, and nothing is added to a closed batch, so its root
never changes; a root is anchored at most once per gateway (the contract refuses the
second). A crash anywhere repeats work at worst: a closed batch left without its root
gets it at the next build.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    func,
    insert,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from marketplace.db.engine import insert as dialect_insert
from marketplace.db.tables import ReceiptBatch, ReceiptSequence, Usage
from marketplace.usage.merkle import MerkleTree
from marketplace.usage.receipts import Domain, Receipt

# a receipt's fields as its call's usage row names them, in Receipt's order
RECEIPT_ROW = tuple("id" if name == "inference_id" else name for name in Receipt._fields)
_COLUMNS = ", ".join(RECEIPT_ROW)
_PRICE = Receipt._fields.index("price")
_SEQUENCE = Receipt._fields.index("sequence")
_MEMBERS_SQL = (
    f"SELECT {_COLUMNS} FROM usage"  # noqa: S608 (constants only)
    " WHERE batch_id = :bucket AND sequence BETWEEN :first AND :last ORDER BY sequence"
)
_LAST_SEQUENCE = (1 << 63) - 1  # what a BIGINT holds
_MEMBERS = text(_MEMBERS_SQL)
# SQLite: the rows as one JSON text, in one step (a step per row lets go of the GIL and
# waits to take it back each time: 10,000 waits behind the request threads under load)
_MEMBERS_SQLITE = text(
    f"SELECT json_group_array(json_array({_COLUMNS})) FROM ({_MEMBERS_SQL})"  # noqa: S608
)
# receipts written with no batch (before their gateway had an open batch, or before
# batches were opened) join the batch being closed: normally none
_ADOPT = text("UPDATE usage SET batch_id = :batch WHERE gateway = :gateway AND batch_id IS NULL")
# where a batch over its size is cut: every `size`-th sequence after the first
_CUTS = text(
    "SELECT sequence FROM (SELECT sequence, row_number() OVER (ORDER BY sequence) AS n"
    " FROM usage WHERE batch_id = :batch) AS ranked"
    " WHERE n > 1 AND (n - 1) % :size = 0 ORDER BY sequence"
)
OPEN, CLOSED, BUILT, ANCHORED = "open", "closed", "built", "anchored"


def reserve_sequences(engine: Engine, gateway: str, size: int, domain: Domain) -> range:
    """The next `size` sequence numbers of `gateway`, for this worker alone. Numbers a
    stopped worker had not used are never used: sequences are unique, not dense. The
    domain its receipts are issued under is recorded with them: the batch builder (in
    another process, maybe with another deployment record) hashes them under it. The
    gateway gets an open batch if it has none, before any of these numbers is used."""
    where = {"chain_id": domain.chain_id, "anchors": domain.anchors}
    with engine.begin() as conn:  # one statement: two first workers cannot both insert
        upsert = dialect_insert(conn, ReceiptSequence).values(
            gateway=gateway, next=1 + size, **where
        )
        taken, open_batch = conn.execute(
            upsert.on_conflict_do_update(
                index_elements=["gateway"], set_={"next": ReceiptSequence.next + size, **where}
            ).returning(ReceiptSequence.next, ReceiptSequence.open_batch)
        ).one()
        if open_batch is None:  # the row stays locked by the upsert until commit
            _open_next(conn, gateway, time.time())
    return range(int(taken) - size, int(taken))


def _open_next(conn: Connection, gateway: str, now: float) -> int:
    """Open a new batch for `gateway` and point its receipts at it (the caller holds
    the gateway's row)."""
    batch = _new_batch(conn, gateway, OPEN, now)
    conn.execute(
        update(ReceiptSequence).where(ReceiptSequence.gateway == gateway).values(open_batch=batch)
    )
    return int(batch)


def _new_batch(
    conn: Connection,
    gateway: str,
    state: str,
    now: float,
    bucket: int | None = None,
    span: tuple[int | None, int | None] = (None, None),
) -> int:
    """A new batch: open, or closed and cut from `bucket` with the sequences `span`."""
    return int(
        conn.execute(
            insert(ReceiptBatch)
            .values(
                gateway=gateway,
                count=0,
                state=state,
                created_at=now,
                bucket=bucket,
                first_sequence=span[0],
                last_sequence=span[1],
            )
            .returning(ReceiptBatch.id)
        ).scalar_one()
    )


def span() -> tuple[ColumnElement[int], ColumnElement[int], ColumnElement[int]]:
    """A batch's bucket (the batch its receipts were written into) and its range of
    sequences: an open batch, or one closed before ranges were kept, holds its bucket's
    every sequence."""
    return (
        func.coalesce(ReceiptBatch.bucket, ReceiptBatch.id),
        func.coalesce(ReceiptBatch.first_sequence, 0),
        func.coalesce(ReceiptBatch.last_sequence, _LAST_SEQUENCE),
    )


def holds() -> ColumnElement[bool]:
    """The condition joining a batch to the usage rows of the receipts it holds: those
    written into it, or into the batch it was cut from, in its range of sequences."""
    # coalesced bounds, not "first IS NULL OR ...": (batch_id, sequence) stays one range
    # of the index for each batch
    bucket, first, last = span()
    return and_(Usage.batch_id == bucket, Usage.sequence.between(first, last))


# whose turn it is to build, by the holder's first word: the leading indexer's or a
# gateway worker's ("indexer:host:pid", "worker:host:pid")
INDEXER_BUILDER, WORKER_BUILDER = "indexer:", "worker:"


def claim_building(
    engine: Engine, gateway: str, holder: str, now: float, ttl: float, *, preempt: bool = False
) -> bool:
    """Whether `holder` builds `gateway`'s batches for the next `ttl` seconds: one
    process at a time hashes them (two would compute the same tree, one in vain). With
    `preempt` (the indexer), a gateway worker's turn is taken at once: builds belong off
    the serving workers whenever an indexer runs."""
    free = (
        (ReceiptSequence.builder == holder)
        | ReceiptSequence.build_until.is_(None)
        | (ReceiptSequence.build_until < now)
    )
    if preempt:
        free = free | ReceiptSequence.builder.startswith(WORKER_BUILDER, autoescape=True)
    with engine.begin() as conn:
        got = conn.execute(
            update(ReceiptSequence)
            .where(ReceiptSequence.gateway == gateway, free)
            .values(builder=holder, build_until=now + ttl)
        )
    return got.rowcount == 1


def release_building(engine: Engine, holder: str) -> None:
    """Give up every building turn `holder` has (it stops, or its build failed): the
    next in line need not wait for the turn to lapse."""
    with engine.begin() as conn:
        conn.execute(
            update(ReceiptSequence)
            .where(ReceiptSequence.builder == holder)
            .values(builder=None, build_until=None)
        )


def issuers(engine: Engine) -> list[tuple[str, Domain]]:
    """Every gateway that has issued receipts (it took sequence numbers), with the domain
    it issues them under."""
    query = select(ReceiptSequence.gateway, ReceiptSequence.chain_id, ReceiptSequence.anchors)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(ReceiptSequence.gateway)).all()
    return [(g, Domain(int(c), a)) for g, c, a in rows if c is not None and a is not None]


def _waiting(gateway: str, limit: int) -> Select[tuple[int, Any]]:
    """(how many, the oldest's time) of `gateway`'s next `limit` receipts to be batched:
    its open batch's, and any written with no batch, in sequence order."""
    open_batch = (
        select(ReceiptSequence.open_batch)
        .where(ReceiptSequence.gateway == gateway)
        .scalar_subquery()
    )
    held = select(Usage.sequence, Usage.time).where(Usage.batch_id == open_batch)
    loose = select(Usage.sequence, Usage.time).where(
        Usage.gateway == gateway, Usage.batch_id.is_(None)
    )
    held = held.order_by(Usage.sequence).limit(limit)
    loose = loose.order_by(Usage.sequence).limit(limit)
    both = union_all(held.subquery().select(), loose.subquery().select()).subquery()
    first = select(both.c.time).order_by(both.c.sequence).limit(limit).subquery()
    return select(func.count(), func.min(first.c.time))


def unbatched(engine: Engine, gateway: str, limit: int) -> tuple[int, int | None]:
    """How many receipts no closed batch holds yet (counted up to `limit`), and the
    oldest's time among the next `limit` to go."""
    with engine.connect() as conn:
        count, oldest = conn.execute(_waiting(gateway, limit)).one()
    return int(count), (None if oldest is None else int(oldest))


def backlog(
    session: Session, gateway: str, now: float, *, limit: int, period: float, slack: float
) -> dict[str, Any]:
    """How far `gateway`'s receipts are from the chain, for health checks: the receipts
    no batch holds yet (counted up to `limit`) and the age of the oldest among the next
    `limit` to go; the batches built and not anchored and the oldest's age; who has the
    turn to build (None once it lapsed). `behind` when a receipt has waited over two
    periods and `slack` seconds for its batch, or a batch over `slack` for its anchor."""
    count, oldest = session.execute(_waiting(gateway, limit)).one()
    built, built_at = session.execute(
        select(func.count(), func.min(ReceiptBatch.created_at)).where(
            ReceiptBatch.gateway == gateway, ReceiptBatch.state.in_((CLOSED, BUILT))
        )
    ).one()
    turn = session.execute(
        select(ReceiptSequence.builder, ReceiptSequence.build_until).where(
            ReceiptSequence.gateway == gateway
        )
    ).one_or_none()
    waited = None if oldest is None else max(0.0, now - oldest)
    unsent = None if built_at is None else max(0.0, now - built_at)
    late = (waited is not None and waited > 2 * period + slack) or (
        unsent is not None and unsent > slack
    )
    return {
        "status": "behind" if late else "ok",
        "unbatched": int(count),
        "oldest_unbatched_seconds": None if waited is None else round(waited, 1),
        "unanchored_batches": int(built),
        "oldest_unanchored_batch_seconds": None if unsent is None else round(unsent, 1),
        "builder": turn[0] if turn is not None and (turn[1] or 0) >= now else None,
    }


def build_batch(engine: Engine, gateway: str, size: int, domain: Domain, now: float) -> int | None:
    """Close `gateway`'s open batch (in batches of at most `size`) and compute every
    closed batch's root: the last batch closed, or None when no receipt waited."""
    closed = close_open(engine, gateway, size, now)
    build_closed(engine, gateway, domain)
    return closed[-1] if closed else None


def close_open(engine: Engine, gateway: str, size: int, now: float) -> list[int]:
    """Close `gateway`'s open batch (nothing is written into it after this commits) and
    open the next: the batches closed, none when it held no receipt (it stays open).
    Over `size` receipts (its builder was away), it is cut into batches of at most `size`
    by sequence range (no row is rewritten). The hashing comes after, outside the lock
    (`build_closed`)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # the writers' locks last milliseconds; a
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")  # stuck one: next round
        # FOR UPDATE, not FOR NO KEY UPDATE: only it conflicts with the KEY SHARE every
        # usage write reads the pointer under, so it waits for the writes in flight and
        # they, once it commits, read the next batch (records._RECEIPTS_PG). On SQLite the
        # transaction's write lock (BEGIN IMMEDIATE) does both.
        pointer = conn.execute(
            select(ReceiptSequence.open_batch)
            .where(ReceiptSequence.gateway == gateway)
            .with_for_update()
        ).one_or_none()
        if pointer is None:  # no worker of it took sequence numbers: it issued nothing
            return []
        batch = pointer[0] if pointer[0] is not None else _open_next(conn, gateway, now)
        conn.execute(_ADOPT, {"batch": batch, "gateway": gateway})
        first, last = conn.execute(
            select(func.min(Usage.sequence), func.max(Usage.sequence)).where(
                Usage.batch_id == batch
            )
        ).one()
        if first is None:
            return []
        held = select(Usage.sequence).where(Usage.batch_id == batch).order_by(Usage.sequence)
        cuts: list[int] = []
        if conn.execute(held.offset(size).limit(1)).first() is not None:
            cuts = list(conn.execute(_CUTS, {"batch": batch, "size": size}).scalars())
        # each batch's range of sequences: one closed over its size is cut, not its rows
        # rewritten (a new version of each moved row and its index entries, under the lock
        # the writers wait for)
        ends = [*(cut - 1 for cut in cuts), last]
        done = conn.execute(
            update(ReceiptBatch)
            .where(ReceiptBatch.id == batch, ReceiptBatch.state == OPEN)
            .values(state=CLOSED, created_at=now, first_sequence=first, last_sequence=ends[0])
        )
        if done.rowcount != 1:
            raise RuntimeError(f"receipt batch {batch} was not open")  # the lock says it is
        closed = [batch]
        for start, end in zip(cuts, ends[1:], strict=True):
            closed.append(_new_batch(conn, gateway, CLOSED, now, bucket=batch, span=(start, end)))
        _open_next(conn, gateway, now)
    return [int(b) for b in closed]


def build_closed(engine: Engine, gateway: str, domain: Domain) -> int:
    """Compute the root of each of `gateway`'s closed batches (those just closed, and any
    a builder closed and stopped before hashing): how many."""
    with engine.connect() as conn:
        closed = conn.execute(
            select(ReceiptBatch.id)
            .where(ReceiptBatch.gateway == gateway, ReceiptBatch.state == CLOSED)
            .order_by(ReceiptBatch.id)
        ).scalars()
        ids = list(closed)
    for batch in ids:
        _build(engine, batch, domain)
    return len(ids)


def members(conn: Connection, batch: int) -> list[Receipt]:
    """A batch's receipts in sequence order. Rows are read at the driver level:
    SQLAlchemy's per-row processing cost more than the hashing (measured ~35 of ~60 us
    a receipt)."""
    bucket, first, last = conn.execute(select(*span()).where(ReceiptBatch.id == batch)).one()
    held = {"bucket": bucket, "first": first, "last": last}
    rows: Sequence[Any]
    if conn.dialect.name == "sqlite":
        # sorted here: SQLite 3.40 promises no order inside json_group_array
        got = orjson.loads(conn.execute(_MEMBERS_SQLITE, held).scalar_one())
        rows = sorted(got, key=itemgetter(_SEQUENCE))
    else:
        rows = conn.execute(_MEMBERS, held).all()
    return [Receipt._make((*r[:_PRICE], int(r[_PRICE]), *r[_PRICE + 1 :])) for r in rows]


def _build(engine: Engine, batch: int, domain: Domain) -> None:
    """Compute a closed batch's root and count from its receipts (its range, set when it
    closed, narrowed to the first and last it holds)."""
    with engine.connect() as conn:
        receipts = members(conn, batch)
    tree = MerkleTree([r.digest(domain) for r in receipts])
    with engine.begin() as conn:  # a twin builder may have done it: the same root
        conn.execute(
            update(ReceiptBatch)
            .where(ReceiptBatch.id == batch, ReceiptBatch.state == CLOSED)
            .values(
                root="0x" + tree.root.hex(),
                state=BUILT,
                count=len(receipts),
                first_sequence=receipts[0].sequence,
                last_sequence=receipts[-1].sequence,
            )
        )
