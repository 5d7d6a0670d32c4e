"""The tables: listings (with their model cards and model checks), purchases, credits
and the leases they are spent from, x402 payments and their settlements, usage rows,
API keys and sign-in nonces, the indexer's state and the chain events it applied.
SQLAlchemy 2.0, typed `Mapped[]`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine


class Base(DeclarativeBase):
    """Declarative base of every table."""


UINT256_DIGITS = 78
# SQLite only autoincrements a column declared INTEGER
ROW_ID = BigInteger().with_variant(Integer(), "sqlite")


class Uint256(TypeDecorator[int]):
    """An exact unsigned 256-bit integer: NUMERIC(78, 0) on PostgreSQL; elsewhere a
    zero-padded decimal string, so comparisons and ORDER BY still sort numerically."""

    impl = String(UINT256_DIGITS)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(UINT256_DIGITS, 0))
        return dialect.type_descriptor(String(UINT256_DIGITS))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value < 0 or value >= 1 << 256:
            raise ValueError(f"{value} is not a uint256")
        if dialect.name == "postgresql":
            return Decimal(value)
        return str(value).zfill(UINT256_DIGITS)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


class Listing(Base):
    """A model on sale, as the chain says, plus its model card (untrusted text)."""

    __tablename__ = "listings"

    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    seller: Mapped[str] = mapped_column(String(42), index=True)
    model_cid: Mapped[str] = mapped_column(String(128))
    metadata_cid: Mapped[str] = mapped_column(String(128))
    token: Mapped[str] = mapped_column(String(42))
    price_per_call: Mapped[int] = mapped_column(Uint256)
    active: Mapped[bool] = mapped_column(default=True)
    listed_block: Mapped[int] = mapped_column(BigInteger)
    updated_block: Mapped[int] = mapped_column(BigInteger)
    # "pending" until fetched; "ok"; or why the card is unusable: missing, too_large,
    # invalid_json, invalid_card, cid_mismatch, unavailable. The listing stays visible.
    card_status: Mapped[str] = mapped_column(String(32), default="pending", index=True)
    card_error: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    license: Mapped[str | None] = mapped_column(String(100))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # the earlier listing this one is a new version of (from its card; honoured only
    # when both have the same seller and the earlier one is older)
    supersedes: Mapped[int | None] = mapped_column(BigInteger, index=True)
    card: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Warnings about a card that was kept (e.g. "name_mixed_scripts": a look-alike name)
    card_flags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    # "pending" until the indexer fetched and inspected the model; "ok" (offered for sale
    # and served); "unavailable" (retried); or the refusal's code (external_data,
    # absurd_shape, model_load_too_costly, ...) with the reason in model_error. Only "ok"
    # listings are offered anywhere.
    model_status: Mapped[str] = mapped_column(
        String(32), default="pending", server_default="pending", index=True
    )
    model_error: Mapped[str | None] = mapped_column(Text)
    # The inspected signature ({"inputs": [...], "outputs": [...]}: OIP metadata without
    # loading the model) and what loading it cost in the probe.
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_bytes: Mapped[int | None] = mapped_column(BigInteger)
    load_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # An "unavailable" card or model is fetched again after a backoff that doubles per
    # attempt (epoch seconds), so unreachable content never slows every indexer pass.
    card_attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    card_retry_at: Mapped[float | None]
    model_attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    model_retry_at: Mapped[float | None]


SOLD = ("credited", "per_call")  # Purchase states that count as sales


class Purchase(Base):
    """One `Purchased` event, credited once: (tx_hash, log_index) is unique. A
    `PaidPerCall` event (one call paid with x402, already served) is kept here too, in
    state "per_call": a sale, never credited."""

    __tablename__ = "purchases"
    __table_args__ = (UniqueConstraint("tx_hash", "log_index", name="uq_purchase_log"),)

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(BigInteger)
    model_id: Mapped[int] = mapped_column(BigInteger, index=True)
    buyer: Mapped[str] = mapped_column(String(42), index=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(Uint256)
    fee: Mapped[int] = mapped_column(Uint256)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[str] = mapped_column(String(66))
    # "credited", or "orphaned" when a reorg removed its block (its calls taken back);
    # "per_call" for an x402 sale
    state: Mapped[str] = mapped_column(String(16), default="credited")
    source: Mapped[str] = mapped_column(String(16))  # "indexer" or "receipt"


class Credit(Base):
    """Calls a buyer may still make on a model. Goes below zero only when a reorg takes
    back calls already spent (the debt is paid by the next purchase)."""

    __tablename__ = "credits"

    buyer: Mapped[str] = mapped_column(String(42), primary_key=True)
    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    remaining: Mapped[int] = mapped_column(BigInteger, default=0)  # not counting leases
    purchased: Mapped[int] = mapped_column(BigInteger, default=0)
    # Scratch: the size of the latest lease, set by the same UPDATE that takes it. The
    # grant depends on the old balance (smaller near the end), and RETURNING sees only
    # new values on SQLite and PostgreSQL < 18: without this column, taking a lease
    # would need a read, then a write (a race between workers) or a second statement.
    last_lease: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class CreditLease(Base):
    """Calls a gateway worker took from a credit in one statement, to spend in memory.
    Until settled, `granted - used` of them belong to the lease; settling gives the
    rest back to the credit, once."""

    __tablename__ = "credit_leases"
    __table_args__ = (
        # Settled leases stay as history; every lookup is of open ones (partial indexes).
        Index(
            "ix_credit_leases_open_credit",
            "buyer",
            "model_id",
            sqlite_where=text("settled_at IS NULL"),
            postgresql_where=text("settled_at IS NULL"),
        ),
        Index(
            "ix_credit_leases_open_heartbeat",
            "heartbeat_at",
            sqlite_where=text("settled_at IS NULL"),
            postgresql_where=text("settled_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    buyer: Mapped[str] = mapped_column(String(42))
    model_id: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(64))  # host:pid:random of the worker
    granted: Mapped[int] = mapped_column(BigInteger)
    used: Mapped[int] = mapped_column(BigInteger, default=0)
    # epoch seconds (the holder's clock); a lease not heard from for the TTL is swept
    heartbeat_at: Mapped[float]
    recall: Mapped[bool] = mapped_column(default=False)  # another worker needs the calls
    settled_at: Mapped[float | None]


class X402Payment(Base):
    """One x402 payment: an EIP-3009 authorization of `payer` to the marketplace. The
    row is the nonce's reservation (inserted before the call runs: one use across
    workers and replicas), then holds the settlement transaction, signed and stored
    before it is sent, until the chain says how it ended.

    status: "reserved" (the call runs), "sending" (the settlement was signed and maybe
    sent), "settled" (mined: the payer paid), "failed" (nothing moved), "released" (the
    call failed before settling: nothing moved, the authorization may be used again).
    """

    __tablename__ = "x402_payments"
    __table_args__ = (
        # the payment-identifier extension: one payment per id per payer (NULLs repeat)
        UniqueConstraint("payer", "payment_id", name="uq_x402_payment_id"),
        Index("ix_x402_payments_status", "status", "updated_at"),
    )

    payer: Mapped[str] = mapped_column(String(42), primary_key=True)  # lower case
    nonce: Mapped[str] = mapped_column(String(66), primary_key=True)  # 0x hex
    payment_id: Mapped[str | None] = mapped_column(String(128))
    model_id: Mapped[int] = mapped_column(BigInteger)
    inference_id: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(Uint256)
    valid_after: Mapped[int] = mapped_column(BigInteger)
    valid_before: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(Text)  # 0x hex
    # sha256 of the request body it paid for: a settled payment's owed answer is given
    # only to the same request (anyone can copy an authorization from a pending tx)
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    delivered: Mapped[bool] = mapped_column(default=False)  # an answer was sent for it
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    raw_tx: Mapped[bytes | None] = mapped_column(LargeBinary)
    reason: Mapped[str | None] = mapped_column(String(64))  # why it failed
    created_at: Mapped[float]  # epoch seconds
    updated_at: Mapped[float]


class ChainEvent(Base):
    """Every marketplace event the indexer applied, so a reorg can undo exactly them."""

    __tablename__ = "chain_events"
    __table_args__ = (
        UniqueConstraint("tx_hash", "log_index", name="uq_event_log"),
        Index("ix_chain_events_model_block", "model_id", "block_number"),
    )

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[str] = mapped_column(String(66))
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[int] = mapped_column(BigInteger)
    args: Mapped[dict[str, Any]] = mapped_column(JSON)


class BlockHash(Base):
    """Hashes of recently indexed blocks, to notice when one is no longer canonical."""

    __tablename__ = "block_hashes"

    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(66))


class IndexerState(Base):
    """Where the indexer is, per chain and contract (one row each)."""

    __tablename__ = "indexer_state"

    contract: Mapped[str] = mapped_column(String(42), primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    last_block: Mapped[int] = mapped_column(BigInteger)
    # How the follower loop is doing, for health checks in any process: when it last
    # finished a pass (epoch seconds), and the error of the failing passes since.
    heartbeat_at: Mapped[float | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(default=0, server_default="0")
    # host:pid of the indexer that made the last good pass (the leader, on PostgreSQL)
    leader: Mapped[str | None] = mapped_column(String(64))


class Nonce(Base):
    """A Sign-In with Ethereum nonce: single use, short-lived."""

    __tablename__ = "siwe_nonces"

    value: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    used: Mapped[bool] = mapped_column(default=False)


class ApiKey(Base):
    """An API key of a signed-in address. Only a hash of its secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    address: Mapped[str] = mapped_column(String(42), index=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # None: until revoked; the storefront's session keys expire with their session
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


_RECEIPT, _UNBATCHED = "gateway IS NOT NULL", "gateway IS NOT NULL AND batch_id IS NULL"


def _partial(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index over the rows `where` holds, on both databases."""
    return Index(
        name, *columns, unique=unique, sqlite_where=text(where), postgresql_where=text(where)
    )


class Usage(Base):
    """One paid call: charged when it began, refunded once if it failed on our side; a
    served call's usage receipt (`usage.receipts.Receipt`) in the same row when receipts
    are on, in a batch once one is built."""

    __tablename__ = "usage"
    # Written once per paid call, never updated in the normal course, and every index is
    # paid for on every call: the key, a receipt's sequence, its batch. The receipt lives
    # in the call's row, not a row of its own (a second insert per call cost the database
    # ~15 us a call), and is written into its gateway's open batch: a batch built by
    # updating 10,000 rows cost ~20 us a receipt more (bench.receipts).
    __table_args__ = (
        # partial: a call with no receipt (failed, or receipts off) adds no entry
        _partial("uq_usage_receipt_sequence", "gateway", "sequence", where=_RECEIPT, unique=True),
        # a batch's receipts in sequence order (what its tree is built from)
        _partial("ix_usage_batch", "batch_id", "sequence", where="batch_id IS NOT NULL"),
        # receipts written with no batch (before their gateway had an open batch, or
        # before this scheme): normally none, so no entry is ever written
        _partial("ix_usage_unbatched", "gateway", "sequence", where=_UNBATCHED),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the inference id
    key_id: Mapped[str] = mapped_column(String(16))
    buyer: Mapped[str] = mapped_column(String(42))  # lower case (the receipt's buyer)
    model_id: Mapped[int] = mapped_column(BigInteger)  # and the receipt's model id
    status: Mapped[str] = mapped_column(String(16))  # ok, failed
    lease_id: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(String(64))
    latency_ms: Mapped[float | None]
    charged: Mapped[bool] = mapped_column(default=True)
    refunded: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # the receipt, set together or not at all (a failed call, or receipts off: None)
    gateway: Mapped[str | None] = mapped_column(String(42))  # lower case
    sequence: Mapped[int | None] = mapped_column(BigInteger)
    model_digest: Mapped[str | None] = mapped_column(String(66))
    input_digest: Mapped[str | None] = mapped_column(String(66))
    output_digest: Mapped[str | None] = mapped_column(String(66))
    price: Mapped[int | None] = mapped_column(Uint256)
    method: Mapped[str | None] = mapped_column(String(16))
    time: Mapped[int | None] = mapped_column(BigInteger)
    # the batch it was written into (its gateway's open one; maybe cut: `bucket`)
    batch_id: Mapped[int | None] = mapped_column(BigInteger)


class ReceiptBatch(Base):
    """A Merkle tree over receipts: open (receipts are written into it), closed (its
    receipts fixed), built (root computed), then anchored (the root is on-chain under the
    gateway's address)."""

    __tablename__ = "receipt_batches"
    __table_args__ = (
        UniqueConstraint("gateway", "root", name="uq_receipt_batch_root"),
        _partial("ix_receipt_batches_bucket", "bucket", where="bucket IS NOT NULL"),
    )

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True)
    gateway: Mapped[str] = mapped_column(String(42))
    root: Mapped[str | None] = mapped_column(String(66))
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    # A batch holds the receipts written into `bucket` (None: its own id) with sequences
    # first..last (set when closed): one closed over its size is cut into several by
    # sequence, and no row is rewritten (batches.close_open).
    bucket: Mapped[int | None] = mapped_column(BigInteger)
    first_sequence: Mapped[int | None] = mapped_column(BigInteger)
    last_sequence: Mapped[int | None] = mapped_column(BigInteger)
    # open (taking receipts), closed (no more; its root being computed), built, anchored
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float]
    sending_at: Mapped[float | None]  # a worker claimed the send (stale after a while)
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    anchored_at: Mapped[float | None]


class ReceiptSequence(Base):
    """The next free receipt sequence number of a gateway; workers take blocks of it."""

    __tablename__ = "receipt_sequences"

    gateway: Mapped[str] = mapped_column(String(42), primary_key=True)
    next: Mapped[int] = mapped_column(BigInteger)
    builder: Mapped[str | None] = mapped_column(String(64))  # the process building batches
    build_until: Mapped[float | None]  # its turn ends (a dead builder's, too)
    # the EIP-712 domain the gateway issues its receipts under (its UsageAnchors)
    chain_id: Mapped[int | None] = mapped_column(BigInteger)
    anchors: Mapped[str | None] = mapped_column(String(42))
    # the batch its receipts are written into now (`batches.close_open` moves it on)
    open_batch: Mapped[int | None] = mapped_column(BigInteger)
