"""Indexer catch-up over many purchase events on anvil, measured in one run.

    .venv/bin/python -m bench.indexer [--events 10000]      # (or: make bench)

Puts N `Purchased` events on a fresh anvil (a BulkBuyer contract buys 500 times per
transaction), then times, over the same block range and batch size: the raw
`eth_getLogs` calls alone, decoding those logs with web3, and a full catch-up of a fresh
SQLite database and a fresh PostgreSQL database (if Debian's PostgreSQL 15 is here).
Ends with the issue's goal line.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from marketplace.chain.artifacts import load_artifact
from marketplace.chain.logs import EventDecoder
from marketplace.chain.market import Marketplace, deploy_marketplace
from marketplace.chain.transactions import connect, deploy, send
from marketplace.config import PROJECT_ROOT
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.migrate import migrate
from marketplace.devstack.anvil import dev_signers, start_anvil
from marketplace.indexer.follow import Indexer
from tests.support.launchers import PG_BIN, start_postgres

ARTIFACTS = PROJECT_ROOT / "contracts" / "artifacts"
ANVIL = PROJECT_ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
PER_TX = 500
BATCH = 2000
GOAL = 2000.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-indexer-"))
    node = start_anvil(ANVIL, extra_args=("--gas-limit", "100000000"))
    pg = None
    try:
        w3 = connect(node.rpc_url, timeout=120)
        owner, seller = dev_signers(2)
        dep = deploy_marketplace(w3, owner, ARTIFACTS, fee_bps=250, timeout=300)
        market = Marketplace(w3, dep, ARTIFACTS, timeout=300)
        model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", 1000)
        bulk_address, _ = deploy(w3, load_artifact(ARTIFACTS, "BulkBuyer"), owner, ARTIFACTS)
        bulk = w3.eth.contract(address=bulk_address, abi=load_artifact(ARTIFACTS, "BulkBuyer").abi)
        send(w3, market.token.functions.mint(bulk_address, 10**27), owner, ARTIFACTS)
        start = time.perf_counter()
        made = 0
        while made < args.events:
            count = min(PER_TX, args.events - made)
            send(
                w3,
                bulk.functions.buyMany(dep.marketplace, dep.token, model_id, count, 1000),
                owner,
                ARTIFACTS,
                timeout=300,
            )
            made += count
        w3.provider.make_request("anvil_mine", [5])  # type: ignore[arg-type]
        print(f"put {made} purchases on anvil in {time.perf_counter() - start:.1f} s")
        head = w3.eth.block_number

        # baseline: the raw eth_getLogs calls alone, same range and batch size
        start = time.perf_counter()
        logs = []
        for lo in range(dep.start_block, head + 1, BATCH):
            logs += w3.eth.get_logs(
                {"address": dep.marketplace, "fromBlock": lo, "toBlock": min(lo + BATCH - 1, head)}
            )
        t_logs = time.perf_counter() - start
        topic = bytes(w3.keccak(text="Purchased(uint256,address,uint256,uint256,uint256)"))
        bought = [log for log in logs if bytes(log["topics"][0]) == topic]
        start = time.perf_counter()
        event = market.contract.events.Purchased()
        for log in bought[:500]:  # web3's own decoder, sampled: it is slow
            event.process_log(log)
        t_web3 = (time.perf_counter() - start) * len(bought) / min(len(bought), 500)
        decoder = EventDecoder(load_artifact(ARTIFACTS, "ModelMarketplace").abi, dep.marketplace)
        start = time.perf_counter()
        decoder.decode(bought, "Purchased")
        t_decode = time.perf_counter() - start

        results = {}
        targets = {"sqlite": f"sqlite:///{work / 'bench.db'}"}
        if (PG_BIN / "initdb").exists():
            pg = start_postgres()
            targets["postgresql"] = pg.url
        for name, url in targets.items():
            migrate(url)
            engine = make_engine(url)
            idx = Indexer(
                session_factory(engine), w3, dep, ARTIFACTS, confirmations=0, batch_blocks=BATCH
            )
            start = time.perf_counter()
            result = idx.run_once()
            elapsed = time.perf_counter() - start
            engine.dispose()
            results[name] = (result.events, elapsed)
    finally:
        node.stop()
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    n = len(logs)
    print(f"{n} marketplace logs in blocks {dep.start_block}..{head}, batches of {BATCH}")
    print(f"{'step':<38} {'seconds':>8} {'events/s':>10} {'x raw getLogs':>14}")
    print(f"{'raw eth_getLogs calls alone':<38} {t_logs:>8.2f} {n / t_logs:>10,.0f} {1:>14.2f}")
    m = len(bought)
    print(
        f"{'decode: web3 process_log (sampled)':<38} {t_web3:>8.2f} {m / t_web3:>10,.0f}"
        f" {t_web3 / t_logs:>14.2f}"
    )
    print(
        f"{'decode: ours (topics + eth_abi)':<38} {t_decode:>8.2f} {m / t_decode:>10,.0f}"
        f" {t_decode / t_logs:>14.2f}"
    )
    for name, (events, elapsed) in results.items():
        print(
            f"{'full catch-up, ' + name:<38} {elapsed:>8.2f} {events / elapsed:>10,.0f}"
            f" {elapsed / t_logs:>14.2f}"
        )
    worst = min(events / elapsed for events, elapsed in results.values())
    print()
    print(
        f"goal: indexer_catch_up_events_per_s = {worst:,.0f} (target >= {GOAL:,.0f}) "
        f"{'met' if worst >= GOAL else 'missed'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
