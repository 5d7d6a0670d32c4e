"""The x402_payments rows and their one-way transitions, each a conditional UPDATE so
that two workers (or two replicas) racing on one authorization agree on who won:

    reserved -> sending -> settled (then delivered once)
             -> released (the call failed: nothing sent) -> reserved again
    sending  -> failed (nothing moved)

What is written when: the reservation before the call runs; the signed settlement
before it is sent; "settled" and the usage row together, in one transaction, once the
chain has mined it. A crash anywhere leaves a row the reconciler can finish from the
chain alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from eth_utils.address import to_checksum_address
from sqlalchemy import Connection, Row, func, or_, select, update

from marketplace.chain.per_call import Authorization, SignedSettlement
from marketplace.db.engine import core_table, insert
from marketplace.db.tables import X402Payment

TABLE = core_table(X402Payment)
C = TABLE.c


def key(auth: Authorization) -> tuple[str, str]:
    """The row's primary key: (payer, nonce) as stored."""
    return auth.payer.lower(), "0x" + auth.nonce.hex()


def find(conn: Connection, auth: Authorization, payment_id: str | None) -> Row[Any] | None:
    """The row of this authorization, or of this payer's payment id."""
    payer, nonce = key(auth)
    match = C.nonce == nonce
    if payment_id is not None:
        match = or_(match, C.payment_id == payment_id)
    return conn.execute(
        select(TABLE).where(C.payer == payer, match).order_by(C.created_at).limit(1)
    ).first()


def reserve(
    conn: Connection,
    auth: Authorization,
    *,
    payment_id: str | None,
    model_id: int,
    inference_id: str,
    request: bytes | None,
) -> bool:
    """Reserve the authorization for one call: False when a row for it (or for its
    payment id) exists already."""
    payer, nonce = key(auth)
    now = time.time()
    inserted = conn.execute(
        insert(conn, TABLE)
        .values(
            payer=payer,
            nonce=nonce,
            payment_id=payment_id,
            model_id=model_id,
            inference_id=inference_id,
            amount=auth.value,
            valid_after=auth.valid_after,
            valid_before=auth.valid_before,
            signature="0x" + auth.signature.hex(),
            request_sha256=request.hex() if request is not None else None,
            status="reserved",
            delivered=False,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
        .returning(C.nonce)
    ).first()
    return inserted is not None


def _move(
    conn: Connection, payer: str, nonce: str, where: Any, mine: str | None = None, **values: Any
) -> bool:
    # `mine`: only while the row is still this call's (an inference id), so a call whose
    # reservation lapsed and was taken by another never moves the other's row
    if mine is not None:
        where = where & (C.inference_id == mine)
    done = conn.execute(
        update(TABLE)
        .where(C.payer == payer, C.nonce == nonce, where)
        .values(updated_at=time.time(), **values)
    )
    return bool(done.rowcount)


def rereserve(
    conn: Connection,
    payer: str,
    nonce: str,
    inference_id: str,
    *,
    model_id: int,
    request: bytes | None,
) -> bool:
    """Take a released authorization for a new call (on any model: nothing moved)."""
    return _move(
        conn,
        payer,
        nonce,
        C.status == "released",
        status="reserved",
        inference_id=inference_id,
        model_id=model_id,
        request_sha256=request.hex() if request is not None else None,
        reason=None,
    )


def sending(
    conn: Connection, payer: str, nonce: str, signed: SignedSettlement, mine: str | None = None
) -> bool:
    """Record the signed settlement before it is sent (the reservation is still ours)."""
    return _move(
        conn,
        payer,
        nonce,
        C.status.in_(("reserved", "sending")),
        mine,
        status="sending",
        tx_hash=signed.tx_hash,
        raw_tx=signed.raw,
    )


def settled(
    conn: Connection,
    payer: str,
    nonce: str,
    tx_hash: str,
    *,
    delivered: bool,
    mine: str | None = None,
) -> bool:
    """The settlement is mined (by `tx_hash`); `delivered` when this answer carries it."""
    return _move(
        conn,
        payer,
        nonce,
        C.status.in_(("sending", "reserved")),
        mine,
        status="settled",
        tx_hash=tx_hash,
        delivered=delivered,
        reason=None,
    )


def gave_up(conn: Connection, payer: str, nonce: str) -> bool:
    """The request that sent the settlement stopped waiting for it (it answered 504):
    whoever sees it mined first may deliver the answer it is owed."""
    return _move(conn, payer, nonce, C.status == "sending", reason="unanswered")


def failed(conn: Connection, payer: str, nonce: str, reason: str) -> bool:
    """Nothing moved and nothing will: the authorization cannot pay (any more)."""
    return _move(
        conn, payer, nonce, C.status.in_(("sending", "reserved")), status="failed", reason=reason
    )


def release(
    conn: Connection, payer: str, nonce: str, mine: str | None = None, *, refused: bool = False
) -> bool:
    """The call failed before settling (or the node `refused` the settlement): nothing
    was sent, the authorization is free."""
    was = C.status.in_(("reserved", "sending")) if refused else C.status == "reserved"
    return _move(conn, payer, nonce, was, mine, status="released", tx_hash=None, raw_tx=None)


def deliver(conn: Connection, payer: str, nonce: str, inference_id: str) -> bool:
    """Claim the one answer a settled, undelivered payment is owed; "delivering" until
    the answer is written (a worker that dies meanwhile leaves it to the reconciler)."""
    return _move(
        conn,
        payer,
        nonce,
        (C.status == "settled") & C.delivered.is_(False),
        delivered=True,
        inference_id=inference_id,
        reason="delivering",
    )


def delivered(conn: Connection, payer: str, nonce: str, mine: str) -> bool:
    """The owed answer was given."""
    return _move(conn, payer, nonce, C.status == "settled", mine, reason=None)


def undeliver(conn: Connection, payer: str, nonce: str, mine: str | None = None) -> bool:
    """The claimed answer failed (or its worker died): the payment is owed it again."""
    return _move(conn, payer, nonce, C.status == "settled", mine, delivered=False, reason=None)


def touch(conn: Connection, row: Row[Any]) -> bool:
    """Claim a stale row for reconciling, unchanged since it was read (one reconciler per
    row at a time; the claim also puts off the next look at it)."""
    return _move(
        conn, row.payer, row.nonce, (C.status == row.status) & (C.updated_at == row.updated_at)
    )


def stale(conn: Connection, *, reserved_before: float, sending_before: float) -> Sequence[Row[Any]]:
    """Rows a crash or a timeout left: reservations older than the reservation TTL
    (their worker died before settling), owed answers being delivered as long (their
    worker died mid-call), and settlements sent and not seen mined."""
    return conn.execute(
        select(TABLE)
        .where(
            or_(
                (C.status == "reserved") & (C.updated_at < reserved_before),
                (C.status == "settled")
                & (C.reason == "delivering")
                & (C.updated_at < reserved_before),
                (C.status == "sending") & (C.updated_at < sending_before),
            )
        )
        .order_by(C.updated_at)
        .limit(100)
    ).all()


def counts(conn: Connection) -> dict[str, int]:
    """Rows per status, of those a health check watches (reserved, sending, failed)."""
    watched = ("reserved", "sending", "failed")
    query = select(C.status, func.count()).where(C.status.in_(watched)).group_by(C.status)
    found: dict[str, int] = {str(status): int(n) for status, n in conn.execute(query)}
    return {status: found.get(status, 0) for status in watched}


def authorization(row: Row[Any], to: str) -> Authorization:
    """The authorization a row holds (`to`: the marketplace, the only payee accepted)."""
    return Authorization(
        to_checksum_address(row.payer),
        to,
        int(row.amount),
        int(row.valid_after),
        int(row.valid_before),
        bytes.fromhex(row.nonce[2:]),
        bytes.fromhex(row.signature[2:]),
    )
