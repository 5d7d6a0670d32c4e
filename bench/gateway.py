"""The paid gateway under load, in one run: paid `/v2/models/{id}/infer` vs an unpaid
minimal Flask endpoint running the same session, both under gunicorn (2 workers x 8
threads), with SQLite and with PostgreSQL, at 1 and 16 connections (wrk). Then, one
connection, call after call: an x402 `exact` call (verify + reserve + inference +
settle on anvil, which mines at once) beside a prepaid call, each signed in advance.

    .venv/bin/python -m bench.gateway [--seconds 4] [--runs 3]      # (or: make bench)
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import requests

from inference import codecs
from inference.demos import DEMO_DIR
from marketplace.accounts import keys
from marketplace.bootstrap import make_indexer
from marketplace.chain.market import Marketplace, deploy_marketplace
from marketplace.chain.transactions import connect, send
from marketplace.config import PROJECT_ROOT, Settings
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.migrate import migrate
from marketplace.devstack.anvil import dev_key, dev_signers, start_anvil
from marketplace.devstack.serve import Gunicorn, start_gunicorn
from marketplace.payments.prepaid import ledger
from storage.local import LocalStore
from tests.support.launchers import PG_BIN, start_postgres
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
X402_CALLS = 40  # sequential x402 calls (each its own signed authorization)


def gunicorn(app: str, env: dict[str, str], log: Path) -> Gunicorn:
    """2 workers x THREADS threads (gthread), each with its own SO_REUSEPORT socket (the
    kernel spreads connections over the workers; with one shared socket the first
    worker to wake often took all of wrk's connections)."""
    return start_gunicorn(app, env, workers=2, threads=THREADS, reuse_port=True, log=log)


def best_of(runs: int, *args: object) -> tuple[float, float, float, int]:
    """The wrk run with the most requests/s of `runs`: which worker gets each of wrk's
    keep-alive connections is decided once per run (by the kernel's hash), and an
    uneven split is slower; the best of a few runs is the even one."""
    return max((wrk(*args) for _ in range(runs)), key=lambda r: r[0])  # type: ignore[arg-type]


def wrk(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: int, work: Path
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx) from wrk with a POST script."""
    (work / "body.bin").write_bytes(body)
    lines = [
        "wrk.method = 'POST'",
        f"local f = io.open('{work / 'body.bin'}', 'rb'); wrk.body = f:read('*a'); f:close()",
    ]
    lines += [f"wrk.headers['{k}'] = '{v}'" for k, v in headers.items()]
    (work / "post.lua").write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(connections, 2)),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(work / "post.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, pct("50"), pct("99"), int(bad.group(1)) if bad else 0


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per cell (best kept)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    node = start_anvil(ANVIL)
    pg = None
    servers: list[Gunicorn] = []
    rows = []
    x402_rows: dict[str, tuple[list[float], list[float]]] = {}
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
        if (PG_BIN / "initdb").exists():
            pg = start_postgres()
            databases["postgresql"] = pg.url
        baseline = {}
        for label, (path, _inputs, conns) in MODELS.items():
            unpaid = gunicorn(
                "bench.unpaid_app:create_app()", {"BENCH_MODEL": str(path)}, work / "unpaid.log"
            )
            servers.append(unpaid)
            body, req_headers = bodies[label]
            for c in conns:
                baseline[label, c] = best_of(
                    args.runs, unpaid.url + "/infer", body, req_headers, c, args.seconds, work
                )
            unpaid.stop()
        for name, url in databases.items():
            settings = base.model_copy(update={"database_url": url})
            migrate(settings.db_url)
            make_indexer(settings).run_once()
            sessions = session_factory(make_engine(url))
            with sessions() as s, s.begin():
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
                _, key = keys.create_key(s, buyer.address, "bench")
            for receipts in ("on", "off"):  # off: iris only, the receipts' own cost
                env = {
                    "MODELMARKET_DATA_DIR": str(settings.data_dir),
                    "MODELMARKET_RPC_URL": node.rpc_url,
                    "MODELMARKET_DATABASE_URL": url,
                    "MODELMARKET_SETTLER_KEY": dev_key(4),
                    "MODELMARKET_RECEIPTS": "true" if receipts == "on" else "false",
                }
                paid = gunicorn("app:create_app()", env, work / f"paid-{name}-{receipts}.log")
                servers.append(paid)
                for label, (_path, _inputs, conns) in MODELS.items():
                    if receipts == "off" and label != "iris":
                        continue
                    body, req_headers = bodies[label]
                    headers = {**req_headers, "Authorization": f"Bearer {key}"}
                    for c in conns:
                        result = best_of(
                            args.runs,
                            f"{paid.url}/v2/models/{model_ids[label]}/infer",
                            body,
                            headers,
                            c,
                            args.seconds,
                            work,
                        )
                        rows.append((label, name, c, result, baseline[label, c], receipts))
                if receipts == "on":
                    url_iris = f"{paid.url}/v2/models/{model_ids['iris']}/infer"
                    x402_rows[name] = x402_latency(url_iris, bodies["iris"], key)
                paid.stop()
    finally:
        for server in servers:
            server.stop()
        node.stop()
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"gateway under gunicorn (2 workers x {THREADS} threads), wrk, "
        f"best of {args.runs} runs of {args.seconds} s per cell"
    )
    print(
        f"{'model':<10}{'database':<11}{'receipts':>9}{'conns':>6}{'paid rps':>10}"
        f"{'unpaid rps':>12}{'ratio':>7}"
        f"{'paid p50':>10}{'unpaid p50':>12}{'added p50':>11}{'paid p99':>10}"
        f"{'unpaid p99':>12}{'non-2xx':>9}"
    )
    for label, name, c, (rps, p50, p99, bad), (b_rps, b_p50, b_p99, _b_bad), on in rows:
        print(
            f"{label:<10}{name:<11}{on:>9}{c:>6}{rps:>10,.0f}{b_rps:>12,.0f}{rps / b_rps:>7.2f}"
            f"{p50:>9.2f}m{b_p50:>11.2f}m{p50 - b_p50:>10.2f}m{p99:>9.2f}m{b_p99:>11.2f}m"
            f"{bad:>9}"
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
    for name in dict.fromkeys(r[1] for r in rows):
        # the goals' model, as shipped (receipts on)
        mine = [r for r in rows if r[1] == name and r[0] == "iris" and r[5] == "on"]
        ratio = min(r[3][0] / r[4][0] for r in mine)
        added = max(r[3][1] - r[4][1] for r in mine)
        print(
            f"goal: paid_vs_unpaid_throughput_{name} = {ratio:.2f} (target >= 0.85) "
            f"{'met' if ratio >= 0.85 else 'missed'}"
        )
        print(
            f"goal: added_p50_ms_{name} = {added:.2f} (target <= 1.0) "
            f"{'met' if added <= 1.0 else 'missed'}"
        )
        off = {r[2]: r[3][0] for r in rows if r[1] == name and r[0] == "iris" and r[5] == "off"}
        kept = min(r[3][0] / off[r[2]] for r in mine)
        print(
            f"goal: receipts_on_vs_off_throughput_{name} = {kept:.2f} (target >= 0.95) "
            f"{'met' if kept >= 0.95 else 'missed'}"
        )
    return 0


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
