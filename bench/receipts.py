"""What usage receipts cost the database side of a paid call, per call, on SQLite and
PostgreSQL: the usage rows written as the prepaid keeper writes them (100 a
transaction), with and without their receipts (written into the gateway's open batch),
then that batch closed and its Merkle root computed, as the builder does (a round's
10,000 receipts a batch). The baseline, measured in the same
run, is the usage row alone: what a call costs the database with receipts off. Issue 17
names no goal for this part (its goals are bench.gateway's), so no goal lines: it shows
where a receipt's cost goes.

CPU is this process's (every thread) plus PostgreSQL's (its process tree, from /proc).

    python -m bench.receipts [--calls 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.measure import tree_cpu
from marketplace.db.engine import make_engine
from marketplace.db.migrate import migrate
from marketplace.usage import batches
from marketplace.usage.receipts import Domain, Receipt
from marketplace.usage.records import UsageRecord, write_usage
from tests.support.launchers import PG_BIN, start_postgres

GATEWAY = "0x" + "ab" * 20
DOMAIN = Domain(31337, "0x" + "cd" * 20)
WRITE = 100  # rows a keeper transaction holds


def records(start: int, count: int, receipts: bool) -> list[UsageRecord]:
    """`count` served calls from sequence `start` on, with or without their receipts."""
    now = datetime.now(UTC)
    out = []
    for i in range(start, start + count):
        iid = f"{i:032x}"
        receipt = Receipt(
            GATEWAY, iid, i, 1 + i % 7, "0x" + "11" * 32, f"0x{i:064x}", f"0x{i + 1:064x}",
            "0x" + "44" * 20, 10**15, "prepaid", 1_700_000_000 + i // 1000,
        )  # fmt: skip
        row = (iid, "key", "0x" + "44" * 20, receipt.model_id, "ok", None, None, 1.0)
        out.append(UsageRecord(*row, True, False, now, receipt if receipts else None))
    return out


def cpu(pg_pid: int | None) -> float:
    return time.process_time() + tree_cpu(pg_pid)


def run(url: str, pg_pid: int | None, calls: int, rounds: int) -> dict[str, list[float]]:
    """us of CPU per call for each step, one sample per round."""
    migrate(url)
    engine = make_engine(url)
    batches.reserve_sequences(engine, GATEWAY, 1, DOMAIN)  # the gateway's open batch
    out: dict[str, list[float]] = {"usage row": [], "usage row + receipt": [], "batch build": []}
    start = 0
    for _ in range(rounds):
        for label, with_receipts in (("usage row", False), ("usage row + receipt", True)):
            rows = records(start, calls, with_receipts)
            start += calls
            before = cpu(pg_pid)
            for i in range(0, calls, WRITE):
                with engine.begin() as conn:
                    write_usage(conn, rows[i : i + WRITE])
            out[label].append((cpu(pg_pid) - before) / calls * 1e6)
        before = cpu(pg_pid)  # the round's receipts were written into the open batch:
        assert batches.build_batch(engine, GATEWAY, 10**9, DOMAIN, time.time())  # close, hash
        out["batch build"].append((cpu(pg_pid) - before) / calls * 1e6)
    engine.dispose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000, help="calls (a batch) per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = f"sqlite:///{Path(tmp) / 'bench.db'}"
        results["sqlite"] = run(sqlite, None, args.calls, args.rounds)
    if (PG_BIN / "initdb").exists():
        pg = start_postgres()
        try:
            results["postgresql"] = run(pg.url, pg.pid, args.calls, args.rounds)
        finally:
            pg.stop()
    print(f"{'database':<11} {'step':<21} {'us/call':>8} {'spread':>7} {'vs row':>7}")
    for name, steps in results.items():
        base = statistics.median(steps["usage row"])
        for step, samples in steps.items():
            mid = statistics.median(samples)
            spread = (max(samples) - min(samples)) / mid
            print(f"{name:<11} {step:<21} {mid:>8.1f} {spread:>7.0%} {mid / base:>7.2f}")
        added = statistics.median(steps["usage row + receipt"]) - base
        total = added + statistics.median(steps["batch build"])
        print(f"{name:<11} {'receipt, all told':<21} {total:>8.1f} {'':>7} {total / base:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
