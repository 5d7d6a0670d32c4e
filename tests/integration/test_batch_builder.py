"""Who builds the receipt batches: the leading indexer, so the serving workers only
anchor them (a Merkle tree costs ~17 us a receipt of a worker's GIL); with no indexer
running, a gateway worker, as before. Real anvil, real gateway, real `modelmarket
indexer` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from marketplace.bootstrap import make_batch_builder
from marketplace.chain.transactions import Signer
from marketplace.db.engine import make_engine
from marketplace.db.tables import ReceiptBatch, ReceiptSequence, Usage
from marketplace.devstack.anvil import dev_key
from marketplace.usage import batches, receipts
from tests.integration.test_audit import (
    counts,
    gateway,
    paid_calls,
    post_served,
    reader,
    receipt_and_proof,
)
from tests.support.replicas import replica_env, serve
from tests.support.world import SETTLER, World

pytestmark = pytest.mark.slow


def holder(world: World) -> str | None:
    """Who has the building turn of the world's gateway."""
    with make_engine(world.settings.db_url).connect() as conn:
        return conn.execute(select(ReceiptSequence.builder)).scalar_one()


@pytest.mark.parametrize("which", ["world", "pg_world"])
def test_the_indexer_builds_batches_and_a_worker_only_anchors_them(
    which: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
):
    """The indexer's building turn preempts a worker's, not another indexer's; the
    worker anchors what the indexer built, under the gateway's own domain, and builds
    nothing meanwhile; once the indexer stands down, the worker builds again."""
    from marketplace.usage.verify import check_receipt

    world: World = request.getfixturevalue(which)
    gw = gateway(world)
    monkeypatch.setattr(gw.anchorer, "start", lambda: None)  # rounds only when called
    gw.anchorer.stop()
    gw.anchorer.period = 3600.0
    served = paid_calls(world, prepaid=6, x402=0)
    assert gw.anchorer.run_once() == 0  # nothing due yet; the worker has the turn
    assert (holder(world) or "").startswith("worker:")
    settings = world.settings.model_copy(update={"anchor_period": 3600.0})
    builder = make_batch_builder(settings)
    builder.ttl = 3600.0  # lapses only when the test says
    later = time.time() + 3600  # the period has closed
    assert builder.run_once(later) == 1  # the worker's turn taken at once
    assert holder(world) == builder.holder
    assert counts(world) == (6, 1, 0)  # built, not on-chain yet

    paid_calls(world, prepaid=4, x402=0)
    other = make_batch_builder(settings)  # a second indexer (after a failover, say)
    other.holder = "indexer:other-host:1"
    assert other.run_once(later + 3600) == 0  # the first one's turn is not taken
    assert gw.anchorer.run_once(later + 3600) == 1  # sends the indexer's batch
    assert counts(world) == (10, 1, 6)  # and built none: the 4 new receipts still wait
    chain = reader(world, gw)
    for inference_id in served:
        receipt, proof = receipt_and_proof(gw, inference_id)
        assert check_receipt(receipt, gw.receipt_domain(), proof, chain).ok

    builder.close()  # the indexer stops: the turn is free at once
    assert holder(world) is None
    assert gw.anchorer.run_once(later + 3600) == 1
    assert counts(world) == (10, 2, 10)
    assert (holder(world) or "").startswith("worker:")


def test_with_the_indexer_running_no_gateway_worker_builds_a_batch(
    world: World, sqlite_url: str, tmp_path: Path
):
    """`modelmarket indexer` and the gateway under granian (2 workers), both with a 1 s
    period: every served call is anchored, each batch built by the indexer (its log says
    so; the gateway's says only that it anchored them)."""
    identity = {"MODELMARKET_SETTLER_KEY": dev_key(SETTLER), "MODELMARKET_ANCHOR_PERIOD": "1"}
    server, key, _buyer, gateway_log = serve(world, sqlite_url, tmp_path, 100, **identity)
    indexer_log = tmp_path / "indexer.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODELMARKET_")},
        **replica_env(world, sqlite_url, MODELMARKET_CONFIRMATIONS="0", **identity),
    }
    with open(indexer_log, "ab") as out:
        indexer = subprocess.Popen(
            [sys.executable, "-m", "marketplace.cli", "indexer", "--interval", "0.2"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    engine = make_engine(sqlite_url)
    # the gateway's sequence row first, so the indexer's turn is in place before any
    # receipt waits (else a worker may build the first batch before the indexer's pass)
    deployment = world.market.deployment
    assert deployment.anchors is not None
    domain = receipts.Domain(deployment.chain_id, deployment.anchors.lower())
    batches.reserve_sequences(engine, Signer(dev_key(SETTLER)).address.lower(), 1, domain)

    def turn() -> str:
        with engine.connect() as conn:
            return conn.execute(select(ReceiptSequence.builder)).scalar_one() or ""

    def anchored() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(Usage)
                    .join(ReceiptBatch, batches.holds())
                    .where(ReceiptBatch.state == "anchored")
                ).scalar_one()
            )

    try:
        deadline = time.monotonic() + 60
        while not turn().startswith("indexer:"):
            assert indexer.poll() is None and time.monotonic() < deadline, indexer_log.read_text()
            time.sleep(0.05)
        for i in range(30):
            post_served(world, server.url, key, i)
            if i % 10 == 9:
                time.sleep(1.2)  # a period closes: more than one batch
        deadline = time.monotonic() + 60
        while anchored() < 30:
            assert time.monotonic() < deadline, f"{anchored()} of 30 anchored"
            time.sleep(0.2)
    finally:
        os.killpg(indexer.pid, signal.SIGTERM)
        indexer.wait(10)
        server.stop()
    with engine.connect() as conn:
        built = conn.execute(
            select(func.count()).where(ReceiptBatch.root.is_not(None))
        ).scalar_one()
    assert built >= 2
    indexer_text, gateway_text = indexer_log.read_text(), gateway_log.read_text()
    assert indexer_text.count("built receipt batch") == built, indexer_text[-2000:]
    assert "built receipt batch" not in gateway_text
    assert gateway_text.count("anchored batch") == built


@pytest.mark.parametrize("which", ["world", "pg_world"])
def test_ready_shows_receipts_falling_behind_and_catching_up(
    which: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
):
    """/v2/health/ready's `receipts`: what waits for the chain; `behind` once a receipt
    has waited over two anchor periods and the slack for its batch, and again once a
    batch has waited over the slack for its anchor; ok when the worker anchors it. The
    stall is the anchorer held still (its rounds run when the test says), as a dead
    chain or a failing build leaves it; nothing else is faked."""
    world: World = request.getfixturevalue(which)
    gw = gateway(world)
    monkeypatch.setattr(gw.anchorer, "start", lambda: None)
    gw.anchorer.stop()
    gw.anchorer.period, gw.anchorer.stale_after = 0.5, 3.0  # behind past 4 s, or 3 s

    def health() -> tuple[object, ...]:
        answer = world.client.get("/v2/health/ready")  # type: ignore[attr-defined]
        assert answer.status_code == 200, answer.get_json()
        got = answer.get_json()["receipts"]
        assert got["anchorer"] == "stopped"
        keys = ("status", "unbatched", "unanchored_batches", "builder")
        ages = ("oldest_unbatched_seconds", "oldest_unanchored_batch_seconds")
        return tuple(got[k] for k in (*keys, *ages))

    assert health() == ("ok", 0, 0, None, None, None)
    paid_calls(world, prepaid=3, x402=0)
    assert health()[:4] == ("ok", 3, 0, None)
    time.sleep(4.5)
    late = health()
    assert late[:4] == ("behind", 3, 0, None) and float(late[4]) >= 4.5  # type: ignore[arg-type]

    builder = make_batch_builder(world.settings.model_copy(update={"anchor_period": 0.5}))
    assert builder.run_once() == 1
    assert health()[:5] == ("ok", 0, 1, builder.holder, None)  # built just now
    builder.close()
    time.sleep(3.5)
    stuck = health()
    assert stuck[:5] == ("behind", 0, 1, None, None) and float(stuck[5]) >= 3.5  # type: ignore[arg-type]
    assert gw.anchorer.run_once() == 1
    assert health()[:3] == ("ok", 0, 0)
    assert counts(world) == (3, 1, 3)
