"""Two `modelmarket indexer` processes on one PostgreSQL: one leads and indexes, the other
stands by; the leader is killed (SIGKILL) while catching up, the standby takes over
within seconds, and every purchase is credited exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from marketplace.db.engine import make_engine, session_factory
from marketplace.db.migrate import migrate
from marketplace.db.tables import Credit, IndexerState, Purchase

pytestmark = pytest.mark.slow

PRICE = 10**15
PURCHASES = 30
EMPTY_BLOCKS = 400  # after each third of the purchases: a catch-up long enough to interrupt


def _indexer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "marketplace.cli", "indexer", "--interval", "0.2"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def _wait(what, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_the_standby_takes_over_a_killed_leader_and_nothing_is_credited_twice(
    node, pg_url, tmp_path
):
    market, (_, seller, buyer, *_) = node
    data = tmp_path / "data"
    data.mkdir()
    market.deployment.save(data / "deployment.json")
    migrate(pg_url)
    model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", PRICE)
    for i in range(PURCHASES):  # one block each, with empty stretches between
        market.purchase(buyer, model_id, 1, PRICE)
        if i % 10 == 9:
            market.w3.provider.make_request("anvil_mine", [EMPTY_BLOCKS])  # type: ignore[arg-type]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODELMARKET_")},
        "MODELMARKET_DATA_DIR": str(data),
        "MODELMARKET_RPC_URL": str(market.w3.provider.endpoint_uri),  # type: ignore[attr-defined]
        "MODELMARKET_DATABASE_URL": pg_url,
        "MODELMARKET_CONFIRMATIONS": "0",
        "MODELMARKET_INDEXER_BATCH_BLOCKS": "1",
    }
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_indexer(env, logs[0])]
    try:
        _wait(lambda: "leader" in logs[0].read_text())
        procs.append(_indexer(env, logs[1]))
        _wait(lambda: "standby" in logs[1].read_text())
        sessions = session_factory(make_engine(pg_url))

        def last_block() -> int:
            with sessions() as s:
                return int(s.scalar(select(func.max(IndexerState.last_block))) or 0)

        # kill the leader mid catch-up, with some but not all purchases indexed
        _wait(lambda: last_block() > 5)
        os.killpg(procs[0].pid, signal.SIGKILL)
        killed_at, killed_block = time.monotonic(), last_block()
        head = market.w3.eth.block_number
        assert killed_block < head, "the leader finished before it could be killed"
        _wait(lambda: "leader" in logs[1].read_text(), timeout=30)
        takeover = time.monotonic() - killed_at
        _wait(lambda: last_block() >= head, timeout=60)
        market.purchase(buyer, model_id, 5, PRICE)  # the new leader follows new blocks too
        _wait(lambda: last_block() >= market.w3.eth.block_number, timeout=30)
        with sessions() as s:
            rows = s.scalar(select(func.count()).select_from(Purchase))
            credit = s.execute(select(Credit)).scalar_one()
            state = s.execute(select(IndexerState)).scalar_one()
        assert rows == PURCHASES + 1
        assert credit.purchased == PURCHASES + 5  # each purchase credited once
        assert state.leader is not None and state.leader.endswith(f":{procs[1].pid}")
        print(f"killed at block {killed_block} of {head}; standby led after {takeover:.2f} s")
        assert takeover < 5
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)


def test_the_leaders_jobs_run_after_its_passes_and_a_standby_runs_none(node, pg_url):
    """follow()'s jobs (the receipt batch builder) run after each good pass of the leader
    alone; a job that raises is run again at the next pass and fails no pass."""
    from marketplace.indexer.follow import follow
    from marketplace.indexer.leader import Leadership
    from tests.integration.test_indexer import make_indexer

    market, _ = node
    migrate(pg_url)
    idx = make_indexer(market, pg_url)
    first = Leadership(make_engine(pg_url))
    assert first.ensure()  # another indexer leads
    runs: list[int] = []
    passes: list[object] = []
    roles: list[str] = []

    def job() -> None:
        runs.append(len(passes))
        if len(runs) == 1:
            raise RuntimeError("the first run fails")

    stop = threading.Event()
    follower = threading.Thread(
        target=follow,
        args=(idx, stop),
        kwargs={
            "interval": 0.05,
            "on_result": passes.append,
            "leadership": Leadership(make_engine(pg_url)),
            "on_role": roles.append,
            "jobs": [job],
        },
    )
    follower.start()
    try:
        _wait(lambda: roles == ["standby"])
        time.sleep(0.5)  # ten polls as a standby
        assert runs == [] and passes == []
        first.release()
        _wait(lambda: len(runs) >= 3, timeout=30)
    finally:
        stop.set()
        follower.join(10)
    assert roles == ["standby", "leader"]
    assert runs[:3] == [1, 2, 3]  # after each pass, the failed run's next pass included
