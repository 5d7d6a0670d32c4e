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
import requests
from sqlalchemy import func, select, update

from inference import codecs
from marketplace.bootstrap import make_batch_builder
from marketplace.db.engine import make_engine
from marketplace.db.tables import ReceiptBatch, ReceiptSequence, UsageReceiptRow
from marketplace.devstack.anvil import dev_key
from tests.integration.test_audit import counts, gateway, paid_calls, rows_for
from tests.support.replicas import replica_env, serve
from tests.support.world import SETTLER, World

pytestmark = pytest.mark.slow


def test_the_indexer_builds_batches_and_a_worker_only_anchors_them(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """The indexer's building turn preempts a worker's, the worker anchors what the
    indexer built and builds nothing meanwhile; once the indexer's turn lapses (it
    stopped), the worker builds again."""
    gw = gateway(world)
    monkeypatch.setattr(gw.anchorer, "start", lambda: None)  # rounds only when called
    gw.anchorer.stop()
    gw.anchorer.period = 3600.0
    paid_calls(world, prepaid=6, x402=0)
    assert gw.anchorer.run_once() == 0  # the worker takes the turn; nothing due yet
    builder = make_batch_builder(world.settings.model_copy(update={"anchor_period": 3600.0}))
    assert builder is not None
    later = time.time() + 3600  # the period has closed
    assert builder.run_once(later) == 1  # the worker's turn taken at once
    assert counts(world) == (6, 1, 0)  # built, not on-chain yet

    paid_calls(world, prepaid=4, x402=0)
    assert gw.anchorer.run_once(later + 3600) == 1  # sends the indexer's batch
    assert counts(world) == (10, 1, 6)  # and built none: the 4 new receipts still wait

    engine = make_engine(world.settings.db_url)
    with engine.begin() as conn:  # the indexer stopped and its turn ran out (ttl 30 s)
        conn.execute(update(ReceiptSequence).values(build_until=time.time() - 1))
    assert gw.anchorer.run_once(later + 3600) == 1
    assert counts(world) == (10, 2, 10)
    with engine.connect() as conn:
        holder = conn.execute(select(ReceiptSequence.builder)).scalar_one()
    assert holder == f"{os.uname().nodename[:40]}:{os.getpid()}"  # the worker's turn again


def test_with_the_indexer_running_no_gateway_worker_builds_a_batch(
    world: World, sqlite_url: str, tmp_path: Path
):
    """`modelmarket indexer` and the gateway under gunicorn (2 workers), both with a 1 s
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

    def anchored() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(UsageReceiptRow)
                    .join(ReceiptBatch, ReceiptBatch.id == UsageReceiptRow.batch_id)
                    .where(ReceiptBatch.state == "anchored")
                ).scalar_one()
            )

    try:
        deadline = time.monotonic() + 60
        while "leader" not in indexer_log.read_text():
            assert indexer.poll() is None and time.monotonic() < deadline, indexer_log.read_text()
            time.sleep(0.05)
        for i in range(30):
            body, headers = codecs.encode_request({"features": rows_for(i)})
            answer = requests.post(
                f"{server.url}/v2/models/{world.model_id}/infer",
                data=body,
                headers={**headers, "Authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
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
        built = conn.execute(select(func.count()).select_from(ReceiptBatch)).scalar_one()
    assert built >= 2
    indexer_text, gateway_text = indexer_log.read_text(), gateway_log.read_text()
    assert indexer_text.count("built receipt batch") == built, indexer_text[-2000:]
    assert "built receipt batch" not in gateway_text
    assert gateway_text.count("anchored batch") == built
