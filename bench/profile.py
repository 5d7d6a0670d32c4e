"""Where a paid call's CPU goes: py-spy samples both workers of the paid gateway (SQLite,
iris, receipts on, then off) under wrk at 16 connections, and of the unpaid endpoint the
same way, under granian (what ships: marketplace/granian_server.py) or gunicorn. py-spy
samples the thread holding the GIL (the one running Python: sampling every thread the
OS calls running counted threads waiting for the GIL where they waited); samples are
split into the parts of a call (each part: the samples whose stack holds its function,
first match in PARTS order) and scaled to the CPU per call read from /proc meanwhile.
What runs without the GIL (onnxruntime's run, granian's Rust threads) is spread over
the parts: read the parts as shares of the total, and the totals as measured.

    .venv/bin/python -m bench.profile [--seconds 10] [--server granian|gunicorn]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psycopg

from bench.gateway import MODELS, prepare, receipts_issued, start, start_indexer, stop_indexer
from bench.measure import tree_cpu, wrk

# (part, a function whose frame in a stack puts the sample in it): request thread first
PARTS = [
    ("onnxruntime run", "Session.run (onnxruntime"),
    ("decode request", "decode_request ("),
    ("check inputs", "check_inputs ("),
    ("encode response", "encode_response ("),
    ("who pays (API key)", "PaymentPipeline.identify ("),
    ("listing lookup", "Gateway.listing ("),
    ("payment begin (lease spend)", "PaymentPipeline.begin ("),
    ("receipt (digests, sequence)", "PaymentPipeline.receipt ("),
    ("payment complete (usage row, receipt header)", "PaymentPipeline.complete ("),
    ("metrics", "call_finished ("),
    ("tensor digests (receipts)", "tensors_digest ("),
    ("model and session cache lookups", "Cache.get ("),
    ("rest of the paid route", "paid_inference ("),
    ("rest of the paid route", "infer (marketplace/web/oip.py"),  # before web.paid_route
    ("paid route as WSGI (body read, answer)", "PaidRoute."),
    ("unpaid route", "infer (bench/unpaid_app.py"),
    ("usage writer thread (keeper)", "Keeper."),
    ("anchorer thread (batches, anchoring)", "Anchorer."),
    ("receipt sequence prefetch", "_fetch_spare ("),
    ("Flask: before-request hooks", "Flask.preprocess_request ("),
    ("Flask: after-request hooks, cookies", "Flask.process_response ("),
    ("Flask: session open", "open_session ("),
    ("Flask + werkzeug (the rest)", "Flask.wsgi_app ("),
    ("gunicorn (accept, parse, send)", "gunicorn/"),
]
RATE = 200  # samples a second
MARKS = ("FOR UPDATE", "FOR KEY SHARE", "FOR NO KEY UPDATE", "RETURNING")
# PostgreSQL's CPU us per call, and per statement (execution us, rows) per call
Database = tuple[float, dict[str, tuple[float, float]]]
IDLE = ("Condition.wait (threading", "Event.wait (threading", "select (selectors", "sleep (")


def profile(  # type: ignore[no-untyped-def]
    server,
    url: str,
    request: tuple[bytes, dict[str, str]],
    seconds: int,
    work: Path,
    pg: Statements | None = None,
):
    """(us per call per part, CPU us per call from /proc, (the share of each worker's
    time its GIL was held, GIL-held us per call), PostgreSQL's CPU per call and its
    statements' share of it, when on PostgreSQL)."""
    wrk(url, request[0], request[1], 16, 2, work)  # warm: sessions loaded, leases taken
    box: dict[str, object] = {}
    if pg is not None:
        pg.reset()
    cpu0 = tree_cpu(server.process.pid)
    load = threading.Thread(
        target=lambda: box.update(r=wrk(url, request[0], request[1], 16, seconds + 2, work))
    )
    load.start()
    spies = [
        subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-p",
                str(pid),
                "-d",
                str(seconds),
                "-r",
                str(RATE),
                "-f",
                "raw",
                "--nonblocking",
                "--gil",
                "-o",
                str(work / f"{pid}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in server.worker_pids()
    ]
    for spy in spies:
        spy.wait()
    load.join()
    total_requests = box["r"][4]  # type: ignore[index]
    cpu = (tree_cpu(server.process.pid) - cpu0) * 1e6 / total_requests
    database = pg.read(total_requests) if pg is not None else None
    parts: collections.Counter[str] = collections.Counter()
    for pid in server.worker_pids():
        for line in (work / f"{pid}").read_text().splitlines():
            stack, count = line.rsplit(" ", 1)
            frames = stack.split(";")
            if any(frames[-1].startswith(i) for i in IDLE):
                continue  # a thread waiting for work
            part = next((p for p, f in PARTS if f in stack), "other")
            parts[part] += int(count)
    busy = sum(parts.values())
    # samples with the GIL held, over the sampling window: how busy each worker's one
    # interpreter was (a worker whose GIL is held all the time serves no faster with more
    # cores), and its time per call
    rps = box["r"][0]  # type: ignore[index]
    held = busy / RATE  # seconds, all workers
    gil = (held / (len(spies) * seconds), held * 1e6 / (rps * seconds))
    return {part: n * cpu / busy for part, n in parts.items()}, cpu, gil, database


class Statements:
    """PostgreSQL's CPU (its process tree, from /proc) and pg_stat_statements' execution
    time per statement over a window: every client's (the workers, the indexer)."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url.replace("+psycopg", ""), pid
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.cpu = 0.0

    def reset(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        self.cpu = tree_cpu(self.pid)

    def read(self, calls: int) -> Database:
        """(PostgreSQL CPU us per call, {statement: (execution us, rows) per call})."""
        cpu = (tree_cpu(self.pid) - self.cpu) * 1e6 / calls
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT query, total_exec_time + total_plan_time, rows FROM pg_stat_statements"
                " WHERE query NOT LIKE '%pg_stat_statements%'"
            ).fetchall()
        spent: collections.Counter[str] = collections.Counter()
        touched: collections.Counter[str] = collections.Counter()
        for query, ms, count in rows:
            spent[statement(query)] += ms * 1e3 / calls
            touched[statement(query)] += count / calls
        return cpu, {name: (us, touched[name]) for name, us in spent.items()}


_TARGET = {"INSERT": "INTO", "UPDATE": "UPDATE", "DELETE": "FROM", "SELECT": "FROM"}
_TOKEN = re.compile(r"\(|\)|[^\s(),]+")


def statement(query: str) -> str:
    """A short name for a statement: its own verb and table (outside any parentheses: a
    WITH query's or a subquery's are not its own), and what marks it."""
    text = " ".join(query.split())
    verb = text.split(" ", 1)[0].upper()
    if verb in ("BEGIN", "COMMIT", "ROLLBACK", "SET", "SELECT") and " FROM " not in text.upper():
        return verb.lower()
    tokens: list[tuple[str, int]] = []  # (word, parenthesis depth)
    depth = 0
    for word in _TOKEN.findall(text):
        depth += {"(": 1, ")": -1}.get(word, 0)
        if word not in ("(", ")"):
            tokens.append((word, depth))
    at = next((i for i, (w, d) in enumerate(tokens) if d == 0 and w.upper() in _TARGET), None)
    if at is None:
        return verb.lower()
    verb = tokens[at][0].upper()
    marks = [m for m in MARKS if m.lower() in text.lower()]
    table = "?"
    for i in range(at, len(tokens) - 1):
        if tokens[i][1] == 0 and tokens[i][0].upper() == _TARGET[verb]:
            word, inside = tokens[i + 1]
            if inside == 0:
                table = word
            else:  # FROM (SELECT ...): the subquery's table, and what the query selects
                table = next(
                    (tokens[j + 1][0] for j in range(i + 1, len(tokens) - 1)
                     if tokens[j][0].upper() == "FROM" and tokens[j + 1][0].upper() != "SELECT"),
                    "?",
                )  # fmt: skip
                marks.append(f"{tokens[at + 1][0]} from a subquery")
            break
    return f"{verb.lower()} {table}" + (f" ({', '.join(marks)})" if marks else "")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--server", choices=("granian", "gunicorn"), default="granian")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    db = args.database
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    market = prepare(work, postgres=db == "postgresql", statements=True)
    if db not in market.databases:
        print("PostgreSQL 15 is not installed; run make setup", file=sys.stderr)
        market.stop()
        return 1
    pg = Statements(market.databases[db], market.pg.pid) if market.pg else None
    results = {}
    try:
        path = MODELS["iris"][0]
        body, headers = market.bodies["iris"]
        # as in production, the leading indexer builds the receipt batches (else a
        # worker would): its CPU is not the workers', so it is reported beside them
        indexer = start_indexer(market, db, work / "indexer.log")
        try:
            paid = start(args.server, "app:create_app()", market.env(db), work / "p.log",
                         "/v2/health/ready")  # fmt: skip
            indexer_cpu = tree_cpu(indexer.pid)
            auth = {**headers, "Authorization": f"Bearer {market.keys_of[db]}"}
            try:
                url = f"{paid.url}/v2/models/{market.model_ids['iris']}/infer"
                results["paid"] = profile(paid, url, (body, auth), args.seconds, work, pg)
            finally:
                paid.stop()
            indexer_cpu = tree_cpu(indexer.pid) - indexer_cpu
            issued = receipts_issued(market.databases[db])
        finally:
            stop_indexer(indexer)
        off = start(args.server, "app:create_app()",
                    market.env(db, MODELMARKET_RECEIPTS="false"), work / "o.log",
                    "/v2/health/ready")  # fmt: skip
        try:
            url = f"{off.url}/v2/models/{market.model_ids['iris']}/infer"
            results["off"] = profile(off, url, (body, auth), args.seconds, work, pg)
        finally:
            off.stop()
        unpaid = start(args.server, "bench.unpaid_app:create_app()", {"BENCH_MODEL": str(path)},
                       work / "u.log", "/")  # fmt: skip
        try:
            results["unpaid"] = profile(
                unpaid, f"{unpaid.url}/infer", (body, headers), args.seconds, work
            )
        finally:
            unpaid.stop()
    finally:
        market.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"CPU per call by part, {args.server} 2 workers x 8 threads, iris, {db}, receipts"
        f" on and off, wrk 16 connections, py-spy at {RATE} Hz for {args.seconds} s in each"
        " worker"
    )
    print(f"{'part':<46}{'paid us':>9}{'receipts off':>13}{'unpaid us':>11}{'share':>7}")
    (paid, paid_cpu, paid_gil, paid_db), (unpaid, unpaid_cpu, unpaid_gil, _) = (
        results["paid"], results["unpaid"]
    )  # fmt: skip
    off_parts, off_cpu, off_gil, off_db = results["off"]
    for part in [*dict.fromkeys(p for p, _ in PARTS), "other"]:
        p, o, u = paid.get(part, 0.0), off_parts.get(part, 0.0), unpaid.get(part, 0.0)
        if p or o or u:
            print(f"{part:<46}{p:>9.0f}{o:>13.0f}{u:>11.0f}{p / paid_cpu:>7.0%}")
    added = paid_cpu - unpaid_cpu
    total = "total (server CPU per call, /proc)"
    print(f"{total:<46}{paid_cpu:>9.0f}{off_cpu:>13.0f}{unpaid_cpu:>11.0f}")
    held = "GIL held per call (py-spy samples)"
    print(f"{held:<46}{paid_gil[1]:>9.0f}{off_gil[1]:>13.0f}{unpaid_gil[1]:>11.0f}")
    busy = "GIL held, share of each worker's time"
    print(f"{busy:<46}{paid_gil[0]:>9.0%}{off_gil[0]:>13.0%}{unpaid_gil[0]:>11.0%}")
    print(
        f"the indexer beside the paid server (builds its receipt batches; in no row above):"
        f" {indexer_cpu * 1e6 / max(issued, 1):.1f} us a receipt over {issued:,} receipts,"
        " idle polling included"
    )
    if paid_db and off_db:
        report_statements(paid_db, off_db)
    met = "met" if added <= 100 else "missed"
    print(f"goal: paid call CPU added = {added:.0f} us (target <= 100) {met}")
    return 0


def report_statements(paid: Database, off: Database) -> None:
    """PostgreSQL's CPU per paid call, and each statement's execution time per call."""
    print("PostgreSQL per paid call (every client: workers and indexer), us")
    print(
        f"{'statement (pg_stat_statements: execution + planning, wall)':<62}"
        f"{'paid':>7}{'rows':>6}{'off':>7}{'rows':>6}"
    )
    none = (0.0, 0.0)
    names = sorted(set(paid[1]) | set(off[1]), key=lambda n: -paid[1].get(n, none)[0])
    for name in names:
        (p, pr), (o, orows) = paid[1].get(name, none), off[1].get(name, none)
        if max(p, o) >= 0.1:
            print(f"{name[:61]:<62}{p:>7.1f}{pr:>6.2f}{o:>7.1f}{orows:>6.2f}")
    total_paid, total_off = (sum(us for us, _ in d[1].values()) for d in (paid, off))
    print(f"{'all statements':<62}{total_paid:>7.1f}{'':>6}{total_off:>7.1f}")
    print(f"{'PostgreSQL CPU (its process tree, /proc)':<62}{paid[0]:>7.1f}{'':>6}{off[0]:>7.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
