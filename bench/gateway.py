"""The paid gateway under load, in one run: paid `/v2/models/{id}/infer` vs an unpaid
minimal Flask endpoint running the same session, under granian (what ships:
marketplace/granian_server.py; the unpaid endpoint under granian's own command line with
the same flags) and gunicorn (gunicorn.conf.py), 2 workers (`--workers`) x 8 threads
each, with SQLite and PostgreSQL, receipts on and off, at 1 and 16 connections (wrk).
Every configuration is up at once and the runs interleave (run 1 of every cell, then run
2, ...), so drift on these noisy machines hits them alike; each cell shows its best run,
the spread over runs, and the CPU the server's processes (and PostgreSQL's) used per
request, read from /proc. A `modelmarket indexer` runs on each database throughout, as
in production: it builds the receipt batches the paid servers' workers anchor (its CPU
is shown per receipt, apart). Then, one connection, call after call: an x402 `exact`
call (verify + reserve + inference + settle on anvil, which mines at once) beside a
prepaid call, each signed in advance; and what a usage receipt costs on the request
thread. The goals are judged apart, under the shipped server with receipts on: unpaid
and paid in alternating slices, the median of each paid slice over its neighbours
(bench/paired.py says why).

    .venv/bin/python -m bench.gateway [--seconds 6] [--runs 3] [--servers granian,gunicorn]
        [--workers 2] [--pairs 6] [--pair-seconds 6]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import requests

from bench.measure import Cell, measure, tree_cpu
from bench.paired import Paired, alternate, quartiles
from inference import codecs
from inference.demos import DEMO_DIR
from marketplace.accounts import keys
from marketplace.bootstrap import make_indexer
from marketplace.chain.market import Marketplace, deploy_marketplace
from marketplace.chain.transactions import connect, send
from marketplace.config import PROJECT_ROOT, Settings
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.migrate import migrate
from marketplace.devstack.anvil import Anvil, dev_key, dev_signers, start_anvil
from marketplace.devstack.serve import Server, start_granian, start_gunicorn, start_shipped_granian
from marketplace.payments.prepaid import ledger
from storage.local import LocalStore
from tests.support.launchers import PG_BIN, Postgres, start_postgres
from tests.support.x402_client import sdk_payment

ARTIFACTS = PROJECT_ROOT / "contracts" / "artifacts"
ANVIL = PROJECT_ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
MODEL = DEMO_DIR / "iris-classifier.onnx"
# The goals are on the small model; tiny-cnn (a 1x3x32x32 image, ~10x iris's run time)
# shows how the paid path's fixed cost weighs on a model that does some work.
MODELS = {
    "iris": (MODEL, {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}, (1, 16)),
    "tiny-cnn": (
        DEMO_DIR / "tiny-cnn.onnx",
        {"image": np.random.default_rng(0).random((1, 3, 32, 32), np.float32)},
        (16,),
    ),
}


THREADS = 8
SHIPPED = "granian"  # the server `modelmarket serve` runs by default: the goals are on it
INDEXER_SETTLE = 10.0  # seconds for the indexers' start (imports, first pass)
INDEXER_IDLE = 20.0  # seconds their idle CPU is read over
X402_CALLS = 40  # sequential x402 calls (each its own signed authorization)


def gunicorn(app: str, env: dict[str, str], log: Path) -> Server:
    """2 workers x THREADS threads (gthread) with the gunicorn.conf.py we ship, each with
    its own SO_REUSEPORT socket (the kernel spreads connections over the workers; with
    one shared socket the first worker to wake often took all of wrk's connections)."""
    return start("gunicorn", app, env, log, "/")


def x402_latency(
    url: str, request: tuple[bytes, dict[str, str]], key: str
) -> tuple[list[float], list[float]]:
    """Milliseconds per call, one connection, call after call: prepaid, then x402 with
    payments the SDK client signed before the clock started (a client signs while it
    waits for nothing; the gateway's verify, reserve and settle are what is timed)."""
    body, headers = request
    with requests.Session() as http:
        offered = http.post(url, data=body, headers=headers, timeout=30)
        payments = [sdk_payment(3, offered) for _ in range(X402_CALLS)]
        prepaid, x402 = [], []
        for payment in payments:
            start = time.perf_counter()
            ok = http.post(url, data=body, headers={**headers, "Authorization": f"Bearer {key}"})
            prepaid.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            paid = http.post(url, data=body, headers={**headers, "PAYMENT-SIGNATURE": payment})
            x402.append((time.perf_counter() - start) * 1000)
            if ok.status_code != 200 or paid.status_code != 200:
                raise RuntimeError(f"x402 bench call failed: {paid.status_code} {paid.text}")
    return prepaid, x402


def start(
    kind: str, app: str, env: dict[str, str], log: Path, ready: str, workers: int = 2
) -> Server:
    """`workers` x THREADS threads under gunicorn with the gunicorn.conf.py we ship (its
    worker hooks: the settled heap, the settling exit) or granian: the gateway as we ship
    it (marketplace/granian_server.py), the unpaid endpoint under granian's own command
    line with the same flags (WSGI, HTTP/1, the same workers and threads)."""
    if kind == "gunicorn":
        return start_gunicorn(
            app, env, workers=workers, threads=THREADS, reuse_port=True, log=log,
            ready_path=ready, config=PROJECT_ROOT / "gunicorn.conf.py",
        )  # fmt: skip
    if app == "app:create_app()":
        server = start_shipped_granian(env, workers=workers, log=log, ready_path=ready)
        server.wait_serving(workers)
        return server
    factory = app.removesuffix("()")  # granian --factory takes "module:function"
    return start_granian(factory, env, workers=workers, threads=THREADS, log=log, ready_path=ready)


@dataclass
class Market:
    """anvil with the contracts, the MODELS listed, and per database (SQLite, and
    PostgreSQL when its binaries are here) the listings indexed and a buyer with calls
    and an API key: what every gateway benchmark serves."""

    node: Anvil
    base: Settings
    model_ids: dict[str, int]
    bodies: dict[str, tuple[bytes, dict[str, str]]]
    databases: dict[str, str]
    keys_of: dict[str, str]  # database -> the buyer's API key there
    pg: Postgres | None

    @property
    def pg_pid(self) -> int | None:
        """The postmaster's pid (its children are the backends)."""
        if self.pg is None:
            return None
        return self.pg.pid

    def env(self, database: str, **extra: str) -> dict[str, str]:
        """The paid gateway's environment on `database`."""
        return {
            "MODELMARKET_DATA_DIR": str(self.base.data_dir),
            "MODELMARKET_RPC_URL": self.node.rpc_url,
            "MODELMARKET_DATABASE_URL": self.databases[database],
            "MODELMARKET_SETTLER_KEY": dev_key(4),
            **extra,
        }

    def stop(self) -> None:
        self.node.stop()
        if self.pg:
            self.pg.stop()


def start_indexer(m: Market, database: str, log: Path) -> subprocess.Popen[bytes]:
    """`modelmarket indexer` on `database`, as production runs it beside the gateways: it
    leads, and builds the receipt batches the gateways' workers then anchor. Its CPU is
    reported per receipt, apart from the cells: a build of one cell's receipts may run
    during another cell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMARKET_")}
    env |= m.env(database, MODELMARKET_CONFIRMATIONS="0")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "marketplace.cli", "indexer"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def stop_indexer(indexer: subprocess.Popen[bytes]) -> None:
    """Stop what start_indexer started: SIGTERM, SIGKILL after 10 s."""
    os.killpg(indexer.pid, signal.SIGTERM)
    try:
        indexer.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(indexer.pid, signal.SIGKILL)
        indexer.wait()


def start_indexers(
    m: Market, work: Path, into: dict[str, subprocess.Popen[bytes]]
) -> dict[str, float]:
    """A `modelmarket indexer` on each database (put in `into` as each starts, so the
    caller stops them however this ends), and each one's idle rate in CPU seconds a
    second: read before the cells (a pass every 2 s: chain, leadership, state), so the
    builds' own CPU can be told apart from polling over a long run."""
    for name in m.databases:
        into[name] = start_indexer(m, name, work / f"indexer-{name}.log")
    time.sleep(INDEXER_SETTLE)
    idle_from = {name: tree_cpu(p.pid) for name, p in into.items()}
    time.sleep(INDEXER_IDLE)
    return {name: (tree_cpu(p.pid) - idle_from[name]) / INDEXER_IDLE for name, p in into.items()}


def check_indexers(indexers: dict[str, subprocess.Popen[bytes]], work: Path) -> None:
    """Raise if an indexer stopped: the workers would build the batches instead."""
    for name, indexer in indexers.items():
        if indexer.poll() is not None:
            raise RuntimeError(f"the {name} indexer stopped; see {work}")


def stop_all(
    running: list[Server], indexers: dict[str, subprocess.Popen[bytes]], m: Market, work: Path
) -> None:
    """Stop what a gateway benchmark started: servers, indexers, the Market; remove its
    folder."""
    for server in running:
        server.stop()
    for indexer in indexers.values():
        stop_indexer(indexer)
    m.stop()
    shutil.rmtree(work, ignore_errors=True)


def prepare(work: Path, postgres: bool = True, statements: bool = False) -> Market:
    """Start and fill the Market (stop it when done); `statements`: PostgreSQL with
    pg_stat_statements loaded."""
    node = start_anvil(ANVIL)
    pg = None
    try:
        w3 = connect(node.rpc_url)
        owner, seller, buyer, payer, settler = dev_signers(5)
        dep = deploy_marketplace(w3, owner, ARTIFACTS, fee_bps=250)
        market = Marketplace(w3, dep, ARTIFACTS)
        send(w3, market.token.functions.mint(payer.address, 10**24), owner, ARTIFACTS)
        send(w3, market.contract.functions.setSettler(settler.address, True), owner, ARTIFACTS)
        base = Settings(
            _env_file=None,
            data_dir=work / "data",
            rpc_url=node.rpc_url,  # type: ignore[call-arg]
            confirmations=0,
        )
        dep.save(base.deployment_path)
        store = LocalStore(base.store_dir)
        model_ids = {}
        for label, (path, _inputs, _conns) in MODELS.items():
            model_cid = store.add(io.BytesIO(path.read_bytes()))
            card = store.add(io.BytesIO(orjson.dumps({"name": label})))
            model_ids[label], _ = market.list_model(seller, model_cid, card, 1000)
        bodies = {label: codecs.encode_request(inputs) for label, (_, inputs, _) in MODELS.items()}
        databases = {"sqlite": base.db_url}
        if postgres and (PG_BIN / "initdb").exists():
            pg = start_postgres(statements=statements)
            databases["postgresql"] = pg.url
        keys_of: dict[str, str] = {}
        for name, url in databases.items():
            settings = base.model_copy(update={"database_url": url})
            migrate(settings.db_url)
            make_indexer(settings).run_once()
            with session_factory(make_engine(url))() as s, s.begin():
                for i, model_id in enumerate(model_ids.values()):
                    ledger.credit(
                        s,
                        ledger.PurchaseRecord(
                            tx_hash="0x" + "ab" * 32,
                            log_index=i,
                            buyer=buyer.address,
                            model_id=model_id,
                            calls=10**12,
                            amount=1,
                            fee=0,
                            block_number=1,
                            block_hash="0x" + "cd" * 32,
                            source="receipt",
                        ),
                    )
                _, keys_of[name] = keys.create_key(s, buyer.address, "bench")
    except BaseException:
        node.stop()
        if pg:
            pg.stop()
        raise
    return Market(node, base, model_ids, bodies, databases, keys_of, pg)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3, help="interleaved wrk runs per cell")
    parser.add_argument("--servers", default="granian,gunicorn")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per server")
    parser.add_argument("--pairs", type=int, default=6, help="paid slices in each goal's run")
    parser.add_argument("--pair-seconds", type=int, default=6, help="seconds a goal slice runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    running: list[Server] = []
    samples: dict[tuple[str, str, str, int], list[Cell]] = {}
    x402_rows: dict[str, tuple[list[float], list[float]]] = {}
    goals: dict[tuple[str, int], Paired] = {}
    m = prepare(work)
    indexers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        model_ids, bodies, databases, keys_of, pg_pid = (
            m.model_ids, m.bodies, m.databases, m.keys_of, m.pg_pid
        )  # fmt: skip
        idle = start_indexers(m, work, indexers)
        started = {name: tree_cpu(p.pid) for name, p in indexers.items()}
        began = time.monotonic()
        for kind in args.servers.split(","):
            # every configuration up at once, runs interleaved: drift hits them alike
            configs: dict[str, tuple[Server, str, int | None]] = {}
            paid_by: dict[str, str] = {}  # configuration -> the buyer's key in its database
            for label in MODELS:
                unpaid = start(
                    kind, "bench.unpaid_app:create_app()",
                    {"BENCH_MODEL": str(MODELS[label][0])}, work / f"unpaid-{kind}.log", "/",
                    args.workers,
                )  # fmt: skip
                running.append(unpaid)
                configs[f"unpaid {label}"] = (unpaid, f"{unpaid.url}/infer", None)
            for name in databases:
                for receipts in ("on", "off"):
                    env = m.env(name, MODELMARKET_RECEIPTS="true" if receipts == "on" else "false")
                    log = work / f"paid-{kind}-{name}-{receipts}.log"
                    paid = start(
                        kind, "app:create_app()", env, log, "/v2/health/ready", args.workers
                    )
                    running.append(paid)
                    db_pid = pg_pid if name == "postgresql" else None
                    for label in MODELS:
                        if label == "iris" or (name == "sqlite" and receipts == "on"):
                            path = f"{paid.url}/v2/models/{model_ids[label]}/infer"
                            configs[f"{name} receipts {receipts} {label}"] = (paid, path, db_pid)
                            paid_by[f"{name} receipts {receipts} {label}"] = keys_of[name]
            for _ in range(args.runs):
                for config, (server, url, db_pid) in configs.items():
                    label = config.rsplit(" ", 1)[1]
                    body, headers = bodies[label]
                    if config in paid_by:
                        headers = {**headers, "Authorization": f"Bearer {paid_by[config]}"}
                    for c in MODELS[label][2]:
                        check_indexers(indexers, work)
                        cell = measure(server, url, (body, headers), c, args.seconds, work, db_pid)
                        samples.setdefault((kind, label, config, c), []).append(cell)
            if kind == SHIPPED:
                _, unpaid_url, _ = configs["unpaid iris"]
                body, headers = bodies["iris"]
                for name in databases:
                    _, paid_url, db_pid = configs[f"{name} receipts on iris"]
                    auth = {**headers, "Authorization": f"Bearer {keys_of[name]}"}
                    for c in MODELS["iris"][2]:
                        goals[name, c] = alternate(
                            (paid_url, body, auth), (unpaid_url, body, headers), c,
                            args.pair_seconds, args.pairs, work, indexers[name].pid, idle[name],
                            db_pid,
                        )  # fmt: skip
                for name in databases:
                    server, url, _ = configs[f"{name} receipts on iris"]
                    x402_rows[name] = x402_latency(url, bodies["iris"], keys_of[name])
            for server in running:
                server.stop()
            running.clear()
        elapsed = time.monotonic() - began
        builds = {
            name: (tree_cpu(indexers[name].pid) - started[name], receipts_issued(url))
            for name, url in databases.items()
        }
    finally:
        stop_all(running, indexers, m, work)
    report(samples, x402_rows, args)
    print()
    print(
        "the indexer beside the servers (its CPU is in no cell above): idle, a pass every"
        f" 2 s; over the {elapsed:.0f} s of cells, per receipt, all of it and less its idle rate"
    )
    for name, (cpu, issued) in builds.items():
        per, builds_only = (cpu / max(issued, 1), (cpu - idle[name] * elapsed) / max(issued, 1))
        print(
            f"{name:<11} idle {idle[name] * 100:4.1f}% of a core {issued:>9,} receipts"
            f" {per * 1e6:>6.1f} us a receipt, {builds_only * 1e6:>6.1f} less idle"
        )
    print()
    report_goals(goals, args)
    return 0


def receipts_issued(url: str) -> int:
    """Receipts written on the database at `url`, batched or waiting."""
    from sqlalchemy import func, select

    from marketplace.db.tables import Usage

    engine = make_engine(url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).where(Usage.gateway.is_not(None))).scalar_one()
    engine.dispose()
    return int(count)


def report(
    samples: dict[tuple[str, str, str, int], list[Cell]],
    x402_rows: dict[str, tuple[list[float], list[float]]],
    args: argparse.Namespace,
) -> None:
    """The table (best run, the spread over runs, CPU per request), x402's latency, a
    receipt's cost on the request thread, receipts on/off (the goals: report_goals)."""
    print(
        f"paid /v2 infer vs an unpaid Flask endpoint, {args.workers} workers x {THREADS}"
        f" threads, wrk, {args.runs} interleaved runs of {args.seconds} s per cell (best"
        " shown; spread = (max - min) / max of req/s; CPU: the server's processes, and"
        " PostgreSQL's, per request, median over runs)"
    )
    print(
        f"{'server':<9}{'model':<9}{'configuration':<22}{'conns':>6}{'req/s':>8}{'spread':>8}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'cpu us':>8}{'db us':>7}{'x unpaid':>9}{'+cpu us':>8}"
    )
    best: dict[tuple[str, str, str, int], Cell] = {}
    for (kind, label, config, c), cells in samples.items():
        top = max(cells, key=lambda x: x[0])
        best[kind, label, config, c] = top
        spread = (top[0] - min(x[0] for x in cells)) / top[0]
        cpu = float(np.median([x[4] for x in cells]))
        db = float(np.median([x[5] for x in cells]))
        base = samples[kind, label, f"unpaid {label}", c]
        b_rps = max(x[0] for x in base)
        b_cpu = float(np.median([x[4] for x in base]))
        shown = config.removesuffix(f" {label}")
        print(
            f"{kind:<9}{label:<9}{shown:<22}{c:>6}{top[0]:>8,.0f}{spread:>7.0%} {top[1]:>7.2f}"
            f"{top[2]:>8.1f}{cpu:>8.0f}{db:>7.0f}{top[0] / b_rps:>9.2f}{cpu - b_cpu:>8.0f}"
        )
    print()
    print(f"x402 exact vs prepaid, iris, 1 connection, {X402_CALLS} sequential calls each")
    print(f"{'database':<11}{'prepaid p50':>12}{'x402 p50':>10}{'added p50':>11}{'x402 p90':>10}")
    for name, (prepaid_ms, x402_ms) in x402_rows.items():
        pp, xp = np.percentile(prepaid_ms, 50), np.percentile(x402_ms, 50)
        print(
            f"{name:<11}{pp:>11.2f}m{xp:>9.2f}m{xp - pp:>10.2f}m{np.percentile(x402_ms, 90):>9.2f}m"
        )
    print(
        "(anvil mines each settlement at once: on a real chain an x402 call also waits for"
        " its block, ~2 s on Base, ~12 s on Ethereum)"
    )
    print()
    receipt_costs()
    print()
    for name in ("sqlite", "postgresql"):
        on, off = f"{name} receipts on iris", f"{name} receipts off iris"
        kept = [
            f"{best[SHIPPED, 'iris', on, c][0] / best[SHIPPED, 'iris', off, c][0]:.2f} at {c}"
            for c in MODELS["iris"][2]
            if (SHIPPED, "iris", on, c) in best
        ]
        if kept:
            print(f"{SHIPPED}, {name}: receipts on / off, best / best: {', '.join(kept)} conns")


def report_goals(goals: dict[tuple[str, int], Paired], args: argparse.Namespace) -> None:
    """The goals, from the alternating slices (bench/paired.py): the medians of the pairs."""
    print(
        f"the goals: {SHIPPED} (shipped), iris, receipts on, paid vs the unpaid endpoint in"
        f" alternating slices of {args.pair_seconds} s ({args.pairs} paid, each between two"
        " unpaid), a ratio per paid slice over its neighbours' mean; the indexer's and"
        " PostgreSQL's CPU in the unpaid slices charged to the paid"
    )
    print(
        f"{'database':<12}{'conns':>6}{'x unpaid q1 / median / q3':>28}{'min - max':>13}"
        f"{'added p50 ms':>14}{'charged us':>12}"
    )
    medians: dict[tuple[str, int], tuple[float, float]] = {}
    for (name, c), paired in goals.items():
        ratios = paired.ratios()
        q1, median, q3 = quartiles(ratios)
        added = statistics.median(paired.added_p50())
        medians[name, c] = median, added
        charged = paired.spilled * 1e6 / max(paired.paid_calls, 1)
        print(
            f"{name:<12}{c:>6}{q1:>14.2f} / {median:.2f} / {q3:.2f}"
            f"{min(ratios):>7.2f} - {max(ratios):.2f}{added:>14.2f}{charged:>12.1f}"
        )
    print(
        "(charged us: per paid call, the indexer's CPU above idle and PostgreSQL's in the"
        " unpaid slices)"
    )
    for (name, c), (ratio, added) in medians.items():
        added_target = 0.3 if c == 1 else 1.0
        print(
            f"goal: paid_vs_unpaid_{name}_{c}conn = {ratio:.2f} (target >= 0.85) "
            f"{'met' if ratio >= 0.85 else 'missed'}"
        )
        print(
            f"goal: added_p50_ms_{name}_{c}conn = {added:.2f} (target <= {added_target}) "
            f"{'met' if added <= added_target else 'missed'}"
        )


def receipt_costs(n: int = 20_000) -> None:
    """What a receipt costs on a paid call's request thread, against what signing each
    one would add (the per-batch root is what commits to them instead)."""
    from eth_account import Account

    from inference.digests import tensors_digest
    from marketplace.usage import receipts as rc
    from marketplace.usage.anchoring import ReceiptIssuer

    issuer = ReceiptIssuer(None, "0x" + "11" * 20, rc.Domain(31337, "0x" + "22" * 20))  # type: ignore[arg-type]
    issuer._numbers, issuer._next, issuer._pid = range(10**9), 0, os.getpid()  # no database
    x = {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
    y = {"label": np.array([0]), "probabilities": np.array([[0.9, 0.05, 0.05]], np.float32)}
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"

    def issue() -> rc.Receipt:
        digests = (tensors_digest(x), tensors_digest(y))
        receipt = issuer.issue("ab" * 16, 1, cid, "0x" + "33" * 20, 1000, "prepaid", 1.8e9, digests)
        rc.header(receipt, issuer.domain)
        return receipt

    started = time.perf_counter()
    for _ in range(n):
        receipt = issue()
    issued = (time.perf_counter() - started) / n * 1e6
    key = dev_key(4)
    signs = n // 10
    started = time.perf_counter()
    for _ in range(signs):
        Account.unsafe_sign_hash(receipt.digest(issuer.domain), key)
    signed = (time.perf_counter() - started) / signs * 1e6
    print("a receipt on the request thread, per call (in-process, one thread)")
    print(f"{'work':<52}{'us':>8}{'x issue':>9}")
    print(f"{'issue (2 tensor digests, sequence, header)':<52}{issued:>8.1f}{1:>9.2f}")
    sign = "EIP-712 digest + secp256k1 signature (not done)"
    print(f"{sign:<52}{signed:>8.1f}{signed / issued:>9.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
