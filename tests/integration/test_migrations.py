"""Alembic migrations build the models' schema on SQLite and PostgreSQL, with no drift."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError

from marketplace.config import PROJECT_ROOT


def _check(url: str) -> None:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    try:
        command.check(cfg)
    except CommandError as exc:  # "New upgrade operations detected: ..."
        pytest.fail(f"models and migrations differ: {exc}")


def test_no_drift_on_sqlite(sqlite_url):
    _check(sqlite_url)


def test_no_drift_on_postgresql(pg_url):
    _check(pg_url)


def test_downgrade_to_nothing_and_back(sqlite_url):
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", sqlite_url)
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")
    _check(sqlite_url)


def test_replicas_starting_together_migrate_one_at_a_time(postgres, tmp_path):
    """Four `modelmarket migrate` at once on an empty PostgreSQL database (replicas and
    indexers starting together): every one succeeds and the schema is whole."""
    import subprocess
    import sys
    import uuid
    from pathlib import Path

    from sqlalchemy import create_engine, text

    name = f"m_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres.rsplit("/", 1)[0] + f"/{name}"
    cli = str(Path(sys.executable).parent / "modelmarket")
    env = {"MODELMARKET_DATABASE_URL": url, "MODELMARKET_DATA_DIR": str(tmp_path)}
    import os

    runs = [
        subprocess.Popen(
            [cli, "migrate"], env={**os.environ, **env}, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    try:
        assert [run.returncode for run in runs] == [0, 0, 0, 0], errors
        _check(url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def test_receipts_move_into_their_usage_rows_and_back(database: str):
    """f1a3c5e7b9d2 moves each receipt into its call's usage row (batch id included) and
    its downgrade moves them back: no receipt is lost either way, and each still hashes
    to the leaf its batch holds."""
    from sqlalchemy import create_engine, text

    from marketplace.db.engine import session_factory
    from marketplace.usage import proofs
    from marketplace.usage.receipts import Domain, Receipt

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", database)
    command.downgrade(cfg, "e4c7a9b1d2f0")
    price = 10**30 + 7  # above 64 bits: stored as Uint256 stores it on each database
    kept = [
        Receipt(
            "0x" + "ab" * 20, f"{i:032x}", 100 + i, 3, "0x" + "11" * 32, f"0x{i:064x}",
            f"0x{i + 1:064x}", "0x" + "44" * 20, price, "prepaid", 1_700_000_000 + i,
        )
        for i in range(3)
    ]  # fmt: skip
    engine = create_engine(database)
    padded = str(price).zfill(78) if engine.dialect.name == "sqlite" else price
    with engine.begin() as conn:
        for i, r in enumerate([*kept, None]):  # the last call failed: no receipt
            conn.execute(
                text(
                    "INSERT INTO usage (id, key_id, buyer, model_id, status, charged,"
                    " refunded, created_at) VALUES (:id, 'k', :buyer, 3, :status, true,"
                    " false, CURRENT_TIMESTAMP)"
                ),
                {
                    "id": f"{i:032x}",
                    "buyer": "0x" + "44" * 20,
                    "status": "failed" if r is None else "ok",
                },
            )
            if r is not None:
                conn.execute(
                    text(
                        "INSERT INTO usage_receipts VALUES (:inference_id, :gateway,"
                        " :sequence, :model_id, :model_digest, :input_digest, :output_digest,"
                        " :buyer, :price, :method, :time, :batch)"
                    ),
                    {**r._asdict(), "price": padded, "batch": 9 if i == 0 else None},
                )
    command.upgrade(cfg, "head")
    domain = Domain(31337, "0x" + "cd" * 20)
    with session_factory(engine)() as s:
        rows = [proofs.receipt_row(s, r.inference_id) for r in kept]
        assert [proofs.to_receipt(row) for row in rows if row is not None] == kept
        assert [row.batch_id for row in rows if row is not None] == [9, None, None]
        assert proofs.receipt_row(s, f"{3:032x}") is None
        leaves = [proofs.to_receipt(row).leaf(domain) for row in rows if row is not None]
    assert leaves == [r.leaf(domain) for r in kept]
    _check(database)

    command.downgrade(cfg, "e4c7a9b1d2f0")
    with engine.connect() as conn:
        back = conn.execute(text("SELECT * FROM usage_receipts ORDER BY sequence")).all()
        columns = set(conn.execute(text("SELECT * FROM usage")).keys())
    assert [(r.inference_id, r.sequence, int(r.price), r.batch_id) for r in back] == [
        (r.inference_id, r.sequence, price, 9 if i == 0 else None) for i, r in enumerate(kept)
    ]
    assert "gateway" not in columns and "batch_id" not in columns
    command.upgrade(cfg, "head")
    engine.dispose()


def test_receipts_that_disagree_with_their_usage_rows_are_not_merged(sqlite_url: str):
    """A receipt whose buyer differs from its usage row's stops the upgrade before any
    change: merging would drop the receipt's own buyer, and its anchored leaf with it."""
    from sqlalchemy import create_engine, text

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", sqlite_url)
    command.downgrade(cfg, "e4c7a9b1d2f0")
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO usage (id, key_id, buyer, model_id, status, charged, refunded,"
                " created_at) VALUES ('a1', 'k', :buyer, 3, 'ok', 1, 0, CURRENT_TIMESTAMP)"
            ),
            {"buyer": "0x" + "44" * 20},
        )
        conn.execute(
            text(
                "INSERT INTO usage_receipts VALUES ('a1', :g, 1, 3, :d, :d, :d, :other,"
                " '1', 'prepaid', 1700000000, NULL)"
            ),
            {"g": "0x" + "ab" * 20, "d": "0x" + "11" * 32, "other": "0x" + "55" * 20},
        )
    with pytest.raises(RuntimeError, match="1 receipts name another buyer"):
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_receipts")).scalar() == 1
    engine.dispose()


def test_batches_cut_by_sequence_go_back_to_their_own_rows(database: str):
    """b3d5f7a9c2e4 cuts a batch closed over its size by sequence, rows unmoved; its
    downgrade gives each cut batch its rows back (the old builder's form), and after the
    upgrade again every receipt still proves into the root of the batch that holds it."""
    import time

    from sqlalchemy import text

    from marketplace.db.engine import make_engine, session_factory
    from marketplace.usage import batches, proofs
    from marketplace.usage.merkle import process_proof
    from marketplace.usage.receipts import Domain
    from marketplace.usage.records import write_usage
    from tests.integration.test_audit import _served

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", database)
    engine = make_engine(database)
    gateway = "0x" + "ab" * 20
    domain = Domain(31337, "0x" + "cd" * 20)
    batches.reserve_sequences(engine, gateway, 1000, domain)
    with engine.begin() as conn:
        write_usage(conn, [_served(gateway, i) for i in range(25)])  # sequences 1..25
    closed = batches.close_open(engine, gateway, 10, time.time())
    assert batches.build_closed(engine, gateway, domain) == 3
    engine.dispose()

    command.downgrade(cfg, "a8b2d4f6c1e3")
    with make_engine(database).connect() as conn:
        held = conn.execute(
            text("SELECT batch_id, count(*) FROM usage GROUP BY batch_id ORDER BY batch_id")
        ).all()
    assert [tuple(row) for row in held] == list(zip(closed, (10, 10, 5), strict=True))

    command.upgrade(cfg, "head")
    engine = make_engine(database)
    with session_factory(engine)() as s:
        for i in (0, 9, 10, 24):
            row = proofs.receipt_row(s, f"{i:032x}")
            assert row is not None
            batch = proofs.batch_row(s, row)
            assert batch is not None and batch.id == closed[min(i // 10, 2)]
            receipt = proofs.to_receipt(row)
            proof = proofs.proof(s, batch, receipt.inference_id, domain)
            assert "0x" + process_proof(receipt.leaf(domain), proof).hex() == batch.root
    engine.dispose()
