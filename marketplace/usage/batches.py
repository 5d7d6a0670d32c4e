"""Receipts and their batches in the database: sequence numbers taken in blocks, a
batch built in one transaction (its root fixed, its receipts assigned), a send claimed
by one worker at a time, and the anchored batch recorded.

What is written when: a receipt in its call's usage row, in the same statement
(`records.write_usage`); its batch id when the batch is built; the batch's transaction
and block once the chain holds its root. A receipt is in at most one batch (the
assignment re-checks `batch_id IS NULL` row by row) and a root is anchored at most once
per gateway (the contract refuses the second), so a crash anywhere repeats work at
worst, never the anchoring.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import Engine, Row, Select, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from marketplace import errors
from marketplace.db.engine import insert as dialect_insert
from marketplace.db.tables import ReceiptBatch, ReceiptSequence, Usage
from marketplace.usage.merkle import MerkleTree
from marketplace.usage.receipts import Domain, Receipt

# a receipt's fields in its call's usage row, in Receipt's order
_COLUMNS = ", ".join("id" if name == "inference_id" else name for name in Receipt._fields)
_PRICE = Receipt._fields.index("price")
_SEQUENCE = Receipt._fields.index("sequence")
_WAITING_SQL = (
    f"SELECT {_COLUMNS} FROM usage"  # noqa: S608 (constants only)
    " WHERE gateway = :gateway AND batch_id IS NULL ORDER BY sequence LIMIT :size"
)
_WAITING = text(_WAITING_SQL)
# SQLite: the rows as one JSON text, in one step (a step per row lets go of the GIL and
# waits to take it back each time: 10,000 waits behind the request threads under load)
_WAITING_SQLITE = text(
    f"SELECT json_group_array(json_array({_COLUMNS})) FROM ({_WAITING_SQL})"  # noqa: S608
)
# `batch_id IS NULL` is re-checked row by row: a receipt is never in two batches
_ASSIGN_SQLITE = text(
    "UPDATE usage SET batch_id = :batch WHERE batch_id IS NULL"
    " AND id IN (SELECT value FROM json_each(:ids))"
)
_ASSIGN_PG = text(
    "UPDATE usage SET batch_id = :batch WHERE batch_id IS NULL"
    " AND id IN (SELECT json_array_elements_text(CAST(:ids AS json)))"
)


def reserve_sequences(engine: Engine, gateway: str, size: int, domain: Domain) -> range:
    """The next `size` sequence numbers of `gateway`, for this worker alone. Numbers a
    stopped worker had not used are never used: sequences are unique, not dense. The
    domain its receipts are issued under is recorded with them: the batch builder (in
    another process, maybe with another deployment record) hashes them under it."""
    where = {"chain_id": domain.chain_id, "anchors": domain.anchors}
    with engine.begin() as conn:  # one statement: two first workers cannot both insert
        upsert = dialect_insert(conn, ReceiptSequence).values(
            gateway=gateway, next=1 + size, **where
        )
        taken = conn.execute(
            upsert.on_conflict_do_update(
                index_elements=["gateway"], set_={"next": ReceiptSequence.next + size, **where}
            ).returning(ReceiptSequence.next)
        ).scalar_one()
    return range(int(taken) - size, int(taken))


def to_receipt(row: Usage) -> Receipt:
    """A served call's receipt from its usage row."""
    return Receipt(*(getattr(row, _ROW_NAMES.get(name, name)) for name in Receipt._fields))


_ROW_NAMES = {"inference_id": "id"}


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


def _next_batch(gateway: str, limit: int) -> Select[tuple[int, Any]]:
    """(how many, the oldest's time) of the next `limit` receipts to go into a batch."""
    waiting = (
        select(Usage.time)
        .where(Usage.gateway == gateway, Usage.batch_id.is_(None))
        .order_by(Usage.sequence)  # the partial index's order: what goes next
        .limit(limit)
        .subquery()
    )
    return select(func.count(), func.min(waiting.c.time))


def unbatched(engine: Engine, gateway: str, limit: int) -> tuple[int, int | None]:
    """How many receipts no batch holds yet (counted up to `limit`), and the oldest's time
    among the next `limit` to go."""
    with engine.connect() as conn:
        count, oldest = conn.execute(_next_batch(gateway, limit)).one()
    return int(count), (None if oldest is None else int(oldest))


def backlog(
    session: Session, gateway: str, now: float, *, limit: int, period: float, slack: float
) -> dict[str, Any]:
    """How far `gateway`'s receipts are from the chain, for health checks: the receipts
    no batch holds yet (counted up to `limit`) and the age of the oldest among the next
    `limit` to go; the batches built and not anchored and the oldest's age; who has the
    turn to build (None once it lapsed). `behind` when a receipt has waited over two
    periods and `slack` seconds for its batch, or a batch over `slack` for its anchor."""
    count, oldest = session.execute(_next_batch(gateway, limit)).one()
    built, built_at = session.execute(
        select(func.count(), func.min(ReceiptBatch.created_at)).where(
            ReceiptBatch.gateway == gateway, ReceiptBatch.state == "built"
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
    """Take up to `size` unbatched receipts (oldest sequence first) into a new batch with
    its Merkle root: the batch id, or None if none were left (or another worker took
    some of them meanwhile: the next round tries again). The tree is computed before the
    write transaction, so SQLite's write lock (the usage writes wait on it) is held only
    for the assignment: one statement over the ids as one JSON text. Rows are read and
    written at the driver level: SQLAlchemy's per-row processing cost more than the
    hashing (measured ~35 of ~60 us a receipt)."""
    with engine.connect() as conn:
        params = {"gateway": gateway, "size": size}
        rows: Sequence[Any]
        if conn.dialect.name == "sqlite":
            # sorted here: SQLite 3.40 promises no order inside json_group_array
            got = orjson.loads(conn.execute(_WAITING_SQLITE, params).scalar_one())
            rows = sorted(got, key=itemgetter(_SEQUENCE))
        else:
            rows = conn.execute(_WAITING, params).all()
    if not rows:
        return None
    receipts = [Receipt._make((*r[:_PRICE], int(r[_PRICE]), *r[_PRICE + 1 :])) for r in rows]
    tree = MerkleTree([r.digest(domain) for r in receipts])
    ids = orjson.dumps([r.inference_id for r in receipts]).decode()
    try:
        with engine.begin() as conn:
            batch = conn.execute(
                insert(ReceiptBatch)
                .values(
                    gateway=gateway,
                    root="0x" + tree.root.hex(),
                    count=len(receipts),
                    first_sequence=receipts[0].sequence,
                    last_sequence=receipts[-1].sequence,
                    state="built",
                    created_at=now,
                )
                .returning(ReceiptBatch.id)
            ).scalar_one()
            assign = _ASSIGN_PG if conn.dialect.name == "postgresql" else _ASSIGN_SQLITE
            if conn.execute(assign, {"batch": batch, "ids": ids}).rowcount != len(receipts):
                raise _Raced
    except (_Raced, IntegrityError):  # IntegrityError: a twin built this very root first
        return None
    return int(batch)


class _Raced(Exception):
    """Another worker batched some of these receipts first: roll back."""


def unsent(engine: Engine, gateway: str) -> list[Row[Any]]:
    """Built batches not anchored yet, oldest first."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(ReceiptBatch.id, ReceiptBatch.root, ReceiptBatch.count.label("receipts"))
                .where(ReceiptBatch.gateway == gateway, ReceiptBatch.state == "built")
                .order_by(ReceiptBatch.id)
            ).all()
        )


def claim(engine: Engine, batch: int, now: float, stale_after: float) -> bool:
    """Claim the send of `batch` for this worker at `now` (the claim's own time: the
    round may have spent long on earlier batches); False when another claimed it within
    `stale_after` seconds (a worker that died mid-send loses its claim after that)."""
    with engine.begin() as conn:
        got = conn.execute(
            update(ReceiptBatch)
            .where(
                ReceiptBatch.id == batch,
                ReceiptBatch.state == "built",
                (ReceiptBatch.sending_at.is_(None)) | (ReceiptBatch.sending_at < now - stale_after),
            )
            .values(sending_at=now)
        )
    return got.rowcount == 1


def release(engine: Engine, batch: int, claimed_at: float) -> None:
    """Give up our claim (the send failed; the next round tries again), not a newer one."""
    with engine.begin() as conn:
        conn.execute(
            update(ReceiptBatch)
            .where(ReceiptBatch.id == batch, ReceiptBatch.sending_at == claimed_at)
            .values(sending_at=None)
        )


def anchored(engine: Engine, batch: int, tx_hash: str | None, block: int, now: float) -> None:
    """Record that the chain holds `batch`'s root."""
    with engine.begin() as conn:
        conn.execute(
            update(ReceiptBatch)
            .where(ReceiptBatch.id == batch)
            .values(
                state="anchored",
                tx_hash=tx_hash,
                block_number=block,
                anchored_at=now,
                sending_at=None,
            )
        )


# ------------------------------------------------------------------ reading


def receipt_row(session: Session, inference_id: str) -> Usage | None:
    """The usage row of a call that has a receipt."""
    row = session.get(Usage, inference_id)
    return row if row is not None and row.gateway is not None else None


def batch_row(session: Session, batch: int) -> ReceiptBatch | None:
    """One batch's row."""
    return session.get(ReceiptBatch, batch)


_trees: dict[tuple[int, str | None, Domain], tuple[list[str], MerkleTree]] = {}
_trees_lock = threading.Lock()
_TREES_KEPT = 8


def proof(session: Session, batch: ReceiptBatch, inference_id: str, domain: Domain) -> list[bytes]:
    """The inclusion proof of a receipt in its batch (the batch's tree is rebuilt from
    its receipts once and kept, by id and root: a few batches, up to 10,000 leaves each)."""
    key = (batch.id, batch.root, domain)
    with _trees_lock:
        kept = _trees.pop(key, None)
        if kept is not None:
            _trees[key] = kept  # the most recently used last: the oldest goes first
    if kept is None:
        query = select(Usage).where(Usage.batch_id == batch.id)
        if batch.first_sequence is not None and batch.last_sequence is not None:
            query = query.where(  # what is indexed: batch_id is not
                Usage.gateway == batch.gateway,
                Usage.sequence.between(batch.first_sequence, batch.last_sequence),
            )
        rows = session.scalars(query.order_by(Usage.sequence)).all()
        ids = [r.id for r in rows]
        kept = (ids, MerkleTree([to_receipt(r).digest(domain) for r in rows]))
        with _trees_lock:
            if len(_trees) >= _TREES_KEPT:
                _trees.pop(next(iter(_trees)))
            _trees[key] = kept
    ids, tree = kept
    if "0x" + tree.root.hex() != batch.root:  # built under another domain (a redeployment)
        raise errors.ConfigurationError(
            f"batch {batch.id} was built under another UsageAnchors; its proofs cannot be made"
        )
    return tree.proof(ids.index(inference_id))


def batches(
    session: Session, gateway: str, *, limit: int = 50, before: int | None = None
) -> Sequence[ReceiptBatch]:
    """A gateway's anchored batches, newest first."""
    query = select(ReceiptBatch).where(
        ReceiptBatch.gateway == gateway, ReceiptBatch.state == "anchored"
    )
    if before is not None:
        query = query.where(ReceiptBatch.id < before)
    return session.scalars(query.order_by(ReceiptBatch.id.desc()).limit(limit)).all()


def anchored_calls(
    session: Session, model_ids: Sequence[int] | None = None
) -> dict[int, tuple[int, int]]:
    """Per model: (calls whose receipt is anchored, batches holding them)."""
    query = (
        select(
            Usage.model_id,
            func.count(),
            func.count(func.distinct(Usage.batch_id)),
        )
        .join(ReceiptBatch, ReceiptBatch.id == Usage.batch_id)
        .where(ReceiptBatch.state == "anchored")
        .group_by(Usage.model_id)
    )
    if model_ids is not None:
        query = query.where(Usage.model_id.in_(list(model_ids)))
    return {int(m): (int(c), int(b)) for m, c, b in session.execute(query).all()}
