"""Reading the audit trail: a call's receipt from its usage row, its batch and its
inclusion proof (the batch's tree rebuilt once and kept), a gateway's anchored batches,
and how many of each model's calls are anchored."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from marketplace import errors
from marketplace.db.tables import ReceiptBatch, Usage
from marketplace.usage.batches import ANCHORED, RECEIPT_ROW, holds, members, span
from marketplace.usage.merkle import MerkleTree
from marketplace.usage.receipts import Domain, Receipt


def to_receipt(row: Usage) -> Receipt:
    """A served call's receipt from its usage row."""
    return Receipt(*(getattr(row, column) for column in RECEIPT_ROW))


def receipt_row(session: Session, inference_id: str) -> Usage | None:
    """The usage row of a call that has a receipt."""
    row = session.get(Usage, inference_id)
    return row if row is not None and row.gateway is not None else None


def batch_row(session: Session, row: Usage) -> ReceiptBatch | None:
    """The batch holding a usage row's receipt (None while none does): the one it was
    written into, or one cut from that, by its sequence."""
    if row.batch_id is None or row.sequence is None:
        return None
    _, first, last = span()
    return session.scalars(
        select(ReceiptBatch).where(
            # the bucket spelled out (not span's coalesce): each side has its index
            or_(
                and_(ReceiptBatch.id == row.batch_id, ReceiptBatch.bucket.is_(None)),
                ReceiptBatch.bucket == row.batch_id,
            ),
            first <= row.sequence,
            last >= row.sequence,
        )
    ).one_or_none()


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
        receipts = members(session.connection(), batch.id)
        ids = [r.inference_id for r in receipts]
        kept = (ids, MerkleTree([r.digest(domain) for r in receipts]))
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
        ReceiptBatch.gateway == gateway, ReceiptBatch.state == ANCHORED
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
            func.count(func.distinct(ReceiptBatch.id)),
        )
        .join(ReceiptBatch, holds())
        .where(ReceiptBatch.state == ANCHORED)
        .group_by(Usage.model_id)
    )
    if model_ids is not None:
        query = query.where(Usage.model_id.in_(list(model_ids)))
    return {int(m): (int(c), int(b)) for m, c, b in session.execute(query).all()}
