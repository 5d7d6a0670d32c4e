"""The audit trail on a real anvil: paid calls (prepaid and x402) get usage receipts,
their batch's Merkle root is anchored on-chain once, and `modelmarket verify`, in a
fresh process that has only an RPC URL and the receipt, accepts each one and re-runs
the model from IPFS; and refuses every kind of tampering with the evidence."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from inference import codecs
from inference.demos import DEMO_DIR
from inference.digests import tensors_digest
from marketplace.chain.anchors import Anchors
from marketplace.chain.transactions import Signer
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import ReceiptBatch, Usage
from marketplace.devstack.anvil import dev_key
from marketplace.usage import batches, proofs, receipts
from marketplace.usage.merkle import MerkleTree
from storage.ipfs import IpfsStore
from tests.support.paths import ARTIFACTS
from tests.support.world import World, buy, sign_in
from tests.support.x402_client import sdk_payment

pytestmark = pytest.mark.slow

BUYER, PAYER = 2, 3


def rows_for(i: int) -> np.ndarray:
    """A different iris input per call (so every receipt's digests differ)."""
    return np.array([[5.0 + i / 10, 3.5, 1.4 + (i % 5) / 10, 0.2]], np.float32)


def gateway(world: World) -> Any:
    return world.client.application.extensions["modelmarket"]  # type: ignore[attr-defined]


def post(world: World, i: int, headers: dict[str, str]) -> Any:
    body, h = codecs.encode_request({"features": rows_for(i)})
    return world.client.post(  # type: ignore[attr-defined]
        f"/v2/models/{world.model_id}/infer", data=body, headers={**h, **headers}
    )


def post_served(world: World, url: str, key: str, i: int) -> Any:
    """The `i`-th iris call to the server at `url`, paid by API key `key`: its 200."""
    import requests

    body, headers = codecs.encode_request({"features": rows_for(i)})
    answer = requests.post(
        f"{url}/v2/models/{world.model_id}/infer",
        data=body,
        headers={**headers, "Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer


def paid_calls(world: World, prepaid: int, x402: int) -> dict[str, tuple[int, str]]:
    """Serve `prepaid` + `x402` calls: inference id -> (input index, receipt header)."""
    key = sign_in(world, BUYER)
    buy(world, BUYER, prepaid)
    world.index()
    served = {}
    for i in range(prepaid + x402):
        if i < prepaid:
            answer = post(world, i, {"Authorization": f"Bearer {key}"})
        else:
            payment = sdk_payment(PAYER, post(world, i, {}))
            answer = post(world, i, {"PAYMENT-SIGNATURE": payment})
        assert answer.status_code == 200, answer.get_json()
        served[answer.headers["X-Inference-Id"]] = (i, answer.headers[receipts.HEADER])
    gateway(world).prepaid.flush()  # the prepaid calls' rows (and receipts) written
    return served


def counts(world: World) -> tuple[int, int, int]:
    """(receipts, batches, receipts in anchored batches)."""
    with session_factory(make_engine(world.settings.db_url))() as s:
        total = s.scalar(select(func.count()).where(Usage.gateway.is_not(None)))
        built = s.scalar(select(func.count()).where(ReceiptBatch.root.is_not(None)))
        anchored = s.scalar(
            select(func.count())
            .select_from(Usage)
            .join(ReceiptBatch, batches.holds())
            .where(ReceiptBatch.state == "anchored")
        )
    return int(total or 0), int(built or 0), int(anchored or 0)


def verify_cli(tmp: Path, world: World, *args: str, ipfs: str | None = None) -> Any:
    """`modelmarket verify` in a fresh process whose settings name only the chain (and
    IPFS for a re-run): an empty data dir, no database, no deployment record."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELMARKET_")} | {
        "MODELMARKET_DATA_DIR": str(tmp / "verifier"),
        "MODELMARKET_RPC_URL": world.anvil.rpc_url,
        "MODELMARKET_PUBLIC_URL": "http://127.0.0.1:9",  # nothing there: never asked
    }
    if ipfs:
        env["MODELMARKET_IPFS_API"] = ipfs
    trusted = ["--anchors", str(world.market.deployment.anchors)]  # as the market publishes it
    return subprocess.run(
        [sys.executable, "-m", "marketplace.cli", "verify", *args, *trusted],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
    )


def save_receipts(world: World, tmp: Path, ids: list[str]) -> list[Path]:
    """Each call's receipt with its proof, as its buyer gets it from the API."""
    keys = {BUYER: sign_in(world, BUYER), PAYER: sign_in(world, PAYER)}
    paths = []
    for inference_id in ids:
        for key in keys.values():
            got = world.client.get(  # type: ignore[attr-defined]
                f"/api/v1/usage/{inference_id}", headers={"Authorization": f"Bearer {key}"}
            )
            if got.status_code == 200:
                break
        assert got.status_code == 200, got.get_json()
        path = tmp / f"receipt-{inference_id}.json"
        path.write_text(json.dumps(got.get_json()))
        paths.append(path)
    return paths


def test_fifty_paid_calls_are_anchored_once_and_verified_from_the_chain(
    world: World, jsipfs: Any, tmp_path: Path
):
    gw = gateway(world)
    gw.anchorer.period = 3600.0  # the period closes when the test says
    served = paid_calls(world, prepaid=25, x402=25)
    assert len(served) == 50
    assert counts(world) == (50, 0, 0)
    before = gw.anchorer.run_once()  # the period has not closed: nothing anchored
    assert before == 0 and counts(world) == (50, 0, 0)

    assert gw.anchorer.run_once(time.time() + 3600) == 1  # the period closes
    assert counts(world) == (50, 1, 50)
    assert gw.anchorer.run_once(time.time() + 7200) == 0  # nothing left: no second root
    with session_factory(make_engine(world.settings.db_url))() as s:
        batch = s.scalars(select(ReceiptBatch).where(ReceiptBatch.state != "open")).one()
    anchors = Anchors(world.market.w3, gw.receipt_domain().anchors, ARTIFACTS)
    held = anchors.anchor_of(gw.identity.address, bytes.fromhex(batch.root[2:]))
    assert (held.batch_id, held.receipts, held.block_number) == (batch.id, 50, batch.block_number)

    # the header each answer carried is the receipt the gateway anchored
    domain = gw.receipt_domain()
    methods = set()
    for inference_id, (_i, header) in served.items():
        receipt, got_domain = receipts.from_header(header)
        assert got_domain == domain and receipt.inference_id == inference_id
        methods.add(receipt.method)
    assert methods == {"prepaid", "x402"}

    paths = save_receipts(world, tmp_path, list(served))
    done = verify_cli(tmp_path, world, *map(str, paths), "--json")
    assert done.returncode == 0, done.stderr
    verdicts = json.loads(done.stdout)
    assert len(verdicts) == 50 and all(v["verified"] for v in verdicts)
    assert {c["name"] for c in verdicts[0]["checks"]} == {
        "domain", "anchored", "contract", "model", "gateway"
    }  # fmt: skip

    # the re-run: the model fetched by its CID from IPFS, run, the output digest equal
    IpfsStore(jsipfs.api).add(io.BytesIO((DEMO_DIR / "iris-classifier.onnx").read_bytes()))
    for inference_id in list(served)[:1] + list(served)[-1:]:  # a prepaid one, an x402 one
        i, _ = served[inference_id]
        given = tmp_path / f"input-{i}.json"
        given.write_text(json.dumps({"features": rows_for(i).tolist()}))
        receipt_file = tmp_path / f"receipt-{inference_id}.json"
        rerun = verify_cli(
            tmp_path, world, str(receipt_file), "--input", str(given), ipfs=jsipfs.api
        )
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "bit-exact" in rerun.stdout


# ------------------------------------------------------------------ tampering


def anchored_world(world: World, calls: int) -> tuple[Any, list[str]]:
    """`calls` prepaid calls served and anchored in one batch: (gateway, inference ids)."""
    gw = gateway(world)
    gw.anchorer.period = 3600.0
    served = paid_calls(world, prepaid=calls, x402=0)
    assert gw.anchorer.run_once(time.time() + 3600) == 1
    return gw, list(served)


def reader(world: World, gw: Any) -> Anchors:
    """UsageAnchors as a verifier reads it: no key."""
    return Anchors(world.market.w3, gw.receipt_domain().anchors, ARTIFACTS)


def receipt_and_proof(gw: Any, inference_id: str) -> tuple[receipts.Receipt, list[bytes]]:
    with gw.reads() as s:
        row = proofs.receipt_row(s, inference_id)
        batch = proofs.batch_row(s, row)
        proof = proofs.proof(s, batch, inference_id, gw.receipt_domain())
        return proofs.to_receipt(row), proof


CHANGES: dict[str, Any] = {
    "gateway": "0x" + "66" * 20,
    "inference_id": "f" * 32,
    "sequence": 10**6,
    "model_id": 99,
    "model_digest": "0x" + "77" * 32,
    "input_digest": "0x" + "88" * 32,
    "output_digest": "0x" + "99" * 32,
    "buyer": "0x" + "aa" * 20,
    "price": 1,
    "method": "x402",
    "time": 1,
}


def test_a_receipt_with_any_one_field_changed_is_refused(world: World, tmp_path: Path):
    gw, ids = anchored_world(world, 3)
    genuine, proof = receipt_and_proof(gw, ids[1])
    chain = reader(world, gw)
    domain = gw.receipt_domain()
    from marketplace.usage.verify import check_receipt

    assert check_receipt(genuine, domain, proof, chain).ok
    assert set(CHANGES) == set(receipts.Receipt._fields)  # every field, one at a time
    for name, value in CHANGES.items():
        forged = genuine._replace(**{name: value})
        verdict = check_receipt(forged, domain, proof, chain)
        failed = {c.name for c in verdict.checks if c.ok is False}
        assert "anchored" in failed and "contract" in failed, name

    # the buyer's view: the CLI exits 6 and leaves the evidence
    path = tmp_path / "forged.json"
    forged = genuine._replace(price=genuine.price // 2)
    path.write_text(
        json.dumps({**receipts.to_json(forged, domain), "proof": ["0x" + p.hex() for p in proof]})
    )
    refused = verify_cli(tmp_path, world, str(path))
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "receipt_refuted" in refused.stderr and "FAIL  anchored" in refused.stdout
    evidence = json.loads((tmp_path / f"evidence-{genuine.inference_id}.json").read_text())
    assert evidence["receipt"]["message"]["price"] == str(forged.price)
    assert evidence["proof"] and evidence["root"]


def test_a_receipt_from_a_batch_never_anchored_is_refused(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    gw = gateway(world)
    monkeypatch.setattr(gw.anchorer, "start", lambda: None)  # no background anchoring:
    gw.anchorer.stop()  # the gateway dies, say, after building the batch
    ids = list(paid_calls(world, prepaid=4, x402=0))
    domain = gw.receipt_domain()
    engine = make_engine(world.settings.db_url)
    assert batches.build_batch(engine, gw.identity.address.lower(), 10_000, domain, time.time())
    key = sign_in(world, BUYER)
    doc = world.client.get(  # type: ignore[attr-defined]
        f"/api/v1/usage/{ids[0]}", headers={"Authorization": f"Bearer {key}"}
    ).get_json()
    assert doc["anchored"] is False and doc["batch"]["state"] == "built" and doc["proof"]
    path = tmp_path / "unanchored.json"
    path.write_text(json.dumps(doc))
    refused = verify_cli(tmp_path, world, str(path))
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "never anchored" in refused.stdout


def test_a_proof_against_another_gateways_root_is_refused(world: World):
    gw, ids = anchored_world(world, 3)
    genuine, proof = receipt_and_proof(gw, ids[0])
    domain = gw.receipt_domain()
    # gateway B anchors, from its own address, a tree holding A's receipts and its own
    b = Signer(dev_key(4))
    values = [genuine.digest(domain), os.urandom(32), os.urandom(32)]
    tree = MerkleTree(values)
    theirs = Anchors(world.market.w3, domain.anchors, ARTIFACTS, signer=b)
    theirs.anchor(1, tree.root, len(values))
    chain = reader(world, gw)
    from marketplace.usage.verify import check_receipt

    other = check_receipt(genuine, domain, tree.proof(0), chain)
    assert not other.ok and {c.name for c in other.checks if c.ok is False} == {
        "anchored",
        "contract",
    }
    # the same receipt claiming B served it: its digest changes, so no tree holds it
    claimed = genuine._replace(gateway=b.address.lower())
    assert not check_receipt(claimed, domain, tree.proof(0), chain).ok
    assert check_receipt(genuine, domain, proof, chain).ok  # A's own root still holds it


def test_a_rerun_that_differs_is_refused_with_the_evidence(
    world: World, jsipfs: Any, tmp_path: Path
):
    """The gateway answered (and committed to) an output the listed model does not give
    on this input: a model swapped behind the same inference id. The chain checks pass;
    the re-run catches it."""
    gw = gateway(world)
    gw.anchorer.period = 3600.0
    served = paid_calls(world, prepaid=2, x402=0)
    victim = next(iter(served))
    swapped = {
        "label": np.array([2], np.int64),
        "probabilities": np.array([[0.1, 0.2, 0.7]], np.float32),
    }
    with session_factory(make_engine(world.settings.db_url))() as s, s.begin():
        row = proofs.receipt_row(s, victim)
        row.output_digest = "0x" + tensors_digest(swapped).hex()
    assert gw.anchorer.run_once(time.time() + 3600) == 1
    i, _ = served[victim]
    paths = save_receipts(world, tmp_path, [victim])
    given = tmp_path / "input.json"
    given.write_text(json.dumps({"features": rows_for(i).tolist()}))
    IpfsStore(jsipfs.api).add(io.BytesIO((DEMO_DIR / "iris-classifier.onnx").read_bytes()))
    refused = verify_cli(
        tmp_path, world, str(paths[0]), "--input", str(given), "--json", ipfs=jsipfs.api
    )
    assert refused.returncode == 6, refused.stdout + refused.stderr
    verdict = json.loads(refused.stdout)
    checks = {c["name"]: c["ok"] for c in verdict["checks"]}
    assert checks["anchored"] and checks["contract"] and checks["model"] and checks["input"]
    assert checks["rerun"] is False
    evidence = verdict["evidence"]
    assert evidence["receipt"]["message"]["outputDigest"] == row.output_digest
    assert evidence["anchor"]["tx"] and evidence["rerun"]["output_digest"] != row.output_digest
    assert set(evidence["rerun"]["outputs"]) == {"label", "probabilities"}


# ------------------------------------------------------------ crash recovery


def test_a_gateway_killed_between_serving_and_anchoring_anchors_each_call_once(
    world: World, sqlite_url: str, tmp_path: Path
):
    """The shipped server (2 workers) serves 20 calls and is SIGKILLed, twice.
    Two crash points inside anchoring are then caused for real on the same database and
    chain: a batch built and never sent, and a batch sent whose mining was never
    recorded. The restarted gateway anchors every served call exactly once, and sends
    no root twice."""

    from marketplace.devstack.anvil import dev_key as key_of
    from tests.support.replicas import replica_env, serve, start_replica
    from tests.support.world import SETTLER

    identity = {"MODELMARKET_SETTLER_KEY": key_of(SETTLER)}
    server, key, _buyer, _log = serve(
        world, sqlite_url, tmp_path, 100, MODELMARKET_ANCHOR_PERIOD="3600", **identity
    )
    engine = make_engine(sqlite_url)
    signer = Signer(key_of(SETTLER))
    me = signer.address.lower()
    domain = receipts.Domain(
        world.market.deployment.chain_id, world.market.deployment.anchors.lower()
    )  # type: ignore[union-attr]
    ids: set[str] = set()

    def serve_20(server: Any) -> None:
        """20 calls, all written, then the server SIGKILLed."""
        try:
            for i in range(20):
                ids.add(post_served(world, server.url, key, i).headers["X-Inference-Id"])
            deadline = time.monotonic() + 10
            while True:  # the keepers write within 0.1 s
                with engine.connect() as conn:
                    query = select(Usage.id).where(Usage.gateway.is_not(None))
                    if set(conn.execute(query).scalars()) == ids:
                        break
                assert time.monotonic() < deadline, "receipts not written"
                time.sleep(0.1)
        finally:
            os.killpg(server.process.pid, 9)
            server.process.wait(10)

    # each crash point needs a batch of its own: 20 calls, the gateway killed, a batch
    # closed and built (never sent); 20 more, killed again, a batch sent (not recorded)
    serve_20(server)
    with engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).where(ReceiptBatch.root.is_not(None))).scalar() == 0
        )
    assert batches.build_batch(engine, me, 10_000, domain, time.time())  # built, never sent
    serve_20(
        start_replica(
            replica_env(world, sqlite_url, MODELMARKET_ANCHOR_PERIOD="3600", **identity),
            tmp_path / "second.log",
        )
    )
    sent = batches.build_batch(engine, me, 10_000, domain, time.time())  # sent, not recorded
    with engine.connect() as conn:
        root = conn.execute(select(ReceiptBatch.root).where(ReceiptBatch.id == sent)).scalar_one()
    chain = Anchors(world.market.w3, domain.anchors, ARTIFACTS, signer=signer)
    chain.anchor(sent, bytes.fromhex(root[2:]), 20)

    restarted = start_replica(
        replica_env(world, sqlite_url, MODELMARKET_ANCHOR_PERIOD="0.5", **identity),
        tmp_path / "restarted.log",
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                anchored = conn.execute(
                    select(func.count())
                    .select_from(Usage)
                    .join(ReceiptBatch, batches.holds())
                    .where(ReceiptBatch.state == "anchored")
                ).scalar()
            if anchored == len(ids):
                break
            assert time.monotonic() < deadline, f"{anchored} of {len(ids)} anchored"
            time.sleep(0.2)
    finally:
        restarted.stop()
    with engine.connect() as conn:
        rows = conn.execute(select(ReceiptBatch).where(ReceiptBatch.state != "open")).all()
        assert conn.execute(select(func.count()).where(Usage.gateway.is_not(None))).scalar() == 40
    assert all(r.state == "anchored" and r.tx_hash for r in rows)
    assert sum(r.count for r in rows) == 40
    events = world.market.w3.eth.get_logs(
        {"address": chain.address, "fromBlock": 0, "toBlock": "latest"}  # type: ignore[typeddict-item]
    )
    mine = [e for e in events if e["topics"][1][-20:] == bytes.fromhex(me[2:])]
    assert len(mine) == len(rows)  # one root per batch: the unrecorded one was not re-sent
    for r in rows:
        assert chain.anchor_of(me, bytes.fromhex(r.root[2:])).receipts == r.count


def test_receipts_on_postgresql_are_written_batched_and_proven(pg_world: World):
    """The same trail on PostgreSQL (its own write path: one JSON statement per round)."""
    from marketplace.usage.verify import check_receipt

    gw = gateway(pg_world)
    gw.anchorer.period = 3600.0
    served = paid_calls(pg_world, prepaid=4, x402=2)
    assert counts(pg_world) == (6, 0, 0)
    assert gw.anchorer.run_once(time.time() + 3600) == 1
    assert counts(pg_world) == (6, 1, 6)
    chain = reader(pg_world, gw)
    for inference_id, (_i, header) in served.items():
        receipt, proof = receipt_and_proof(gw, inference_id)
        assert receipt == receipts.from_header(header)[0]  # stored as the answer said
        assert check_receipt(receipt, gw.receipt_domain(), proof, chain).ok


def _served(gateway_address: str, i: int) -> Any:
    from datetime import UTC, datetime

    from marketplace.usage.records import UsageRecord

    return UsageRecord(
        f"{i:032x}", "k", "0x" + "33" * 20, 1, "ok", None, None, 1.0, True, False,
        datetime.now(UTC),
        receipts.Receipt(
            gateway_address, f"{i:032x}", i + 1, 1, *("0x" + f"{i:064x}",) * 3,
            "0x" + "33" * 20, 10**15, "prepaid", 1_800_000_000,
        ),
    )  # fmt: skip


def _check_batches(engine: Any, domain: receipts.Domain, written: int) -> list[ReceiptBatch]:
    """Every receipt in exactly one batch, and each closed batch's count and root those
    of exactly the receipts it holds (a receipt slipped in after its close would not
    be in its root); the batches checked, the open one aside."""
    with session_factory(engine)() as s:
        assigned = dict(
            s.execute(
                select(Usage.batch_id, func.count())
                .where(Usage.gateway.is_not(None))
                .group_by(Usage.batch_id)
            ).all()
        )
        made = s.scalars(select(ReceiptBatch).where(ReceiptBatch.state != "open")).all()
        assert None not in assigned and sum(assigned.values()) == written
        held = s.execute(select(Usage.id).join(ReceiptBatch, batches.holds())).scalars().all()
        assert len(held) == len(set(held)) == written  # each in one batch (the open one too)
        for batch in made:
            mine = s.scalars(
                select(Usage)
                .join(ReceiptBatch, batches.holds())
                .where(ReceiptBatch.id == batch.id)
                .order_by(Usage.sequence)
            ).all()
            tree = MerkleTree([proofs.to_receipt(r).digest(domain) for r in mine])
            assert batch.state == "built" and batch.count == len(mine)
            assert batch.root == "0x" + tree.root.hex()
    return list(made)


def test_receipts_written_while_builders_close_batches_land_in_exactly_one(database: str):
    """2 writers write 1,500 receipts each in 30-row transactions (two workers' usage
    writers) while 3 builders close and build batches over and over (a worker's
    anchorer and the indexer, their turns lapsed): every receipt lands in exactly one
    batch, and every closed batch's count and root are those of exactly its receipts,
    on both databases."""
    import threading

    from marketplace.db.migrate import migrate
    from marketplace.usage.records import write_usage

    migrate(database)
    engine = make_engine(database)
    gateway_address, domain = "0x" + "11" * 20, receipts.Domain(31337, "0x" + "22" * 20)
    batches.reserve_sequences(engine, gateway_address, 1, domain)
    built: list[int] = []
    failed: list[BaseException] = []
    writing = threading.Event()
    writing.set()
    closes = threading.Condition()

    def writer(start: int) -> None:
        try:
            for n, i in enumerate(range(start, start + 1500, 30)):
                with engine.begin() as conn:
                    write_usage(conn, [_served(gateway_address, j) for j in range(i, i + 30)])
                if n % 10 == 9:  # the threads' turns are the scheduler's: make sure closes
                    with closes:  # fall between the writes, not all after them
                        seen = len(built)
                        closes.wait_for(lambda seen=seen: len(built) > seen, timeout=10)
        except BaseException as exc:
            failed.append(exc)

    def builder() -> None:
        try:
            while writing.is_set():
                b = batches.build_batch(engine, gateway_address, 10_000, domain, time.time())
                if b is not None:
                    with closes:
                        built.append(b)
                        closes.notify_all()
        except BaseException as exc:
            failed.append(exc)

    writers = [threading.Thread(target=writer, args=(k * 1500,)) for k in range(2)]
    builders = [threading.Thread(target=builder) for _ in range(3)]
    for t in writers + builders:
        t.start()
    for t in writers:
        t.join(120)
    writing.clear()
    for t in builders:
        t.join(120)
    assert not failed, failed
    last = batches.build_batch(engine, gateway_address, 10_000, domain, time.time())
    made = _check_batches(engine, domain, 3000)
    assert sorted(b.id for b in made) == sorted([*built, *([last] if last else [])])
    assert len(made) > 3, len(made)  # the builders closed batches while the writes ran
    assert batches.unbatched(engine, gateway_address, 10) == (0, None)
    engine.dispose()


def test_closing_a_batch_waits_for_the_write_in_flight(database: str):
    """A write that read the open batch and has not committed holds the close back: its
    receipts are in the batch closed after it, never in one closed under it."""
    import threading

    from marketplace.db.migrate import migrate
    from marketplace.usage.records import write_usage

    migrate(database)
    engine = make_engine(database)
    gateway_address, domain = "0x" + "11" * 20, receipts.Domain(31337, "0x" + "22" * 20)
    batches.reserve_sequences(engine, gateway_address, 1, domain)
    with engine.begin() as conn:
        write_usage(conn, [_served(gateway_address, i) for i in range(5)])
    closed: list[list[int]] = []
    with engine.begin() as conn:  # in flight: written, not committed
        write_usage(conn, [_served(gateway_address, i) for i in range(5, 8)])
        closing = threading.Thread(
            target=lambda: closed.append(
                batches.close_open(engine, gateway_address, 10_000, time.time())
            )
        )
        closing.start()
        closing.join(1.0)
        assert closing.is_alive() and not closed  # the close waits for this commit
    closing.join(30)
    assert closed and len(closed[0]) == 1
    (batch,) = closed[0]
    with engine.connect() as conn:
        held = conn.execute(select(func.count()).where(Usage.batch_id == batch)).scalar_one()
    assert held == 8
    # closed, its root never computed (a builder stopped between the two): the next
    # round of the builder computes it, though nothing else is due
    from marketplace.usage.anchoring import build_due

    built = build_due(
        engine, gateway_address, domain, holder="indexer:t:1", ttl=30, period=3600,
        max_calls=10_000, now=time.time(),
    )  # fmt: skip
    assert built == 1
    _check_batches(engine, domain, 8)
    engine.dispose()


def test_a_receipt_naming_a_usageanchors_of_its_gateways_own_is_refused(
    world: World, tmp_path: Path
):
    """A hostile gateway anchors a root in a UsageAnchors it deployed itself and names
    that contract in the receipt: everything checks out there, but it is not the
    contract the verifier trusts."""
    from marketplace.chain.artifacts import load_artifact
    from marketplace.chain.transactions import deploy
    from marketplace.usage.verify import check_receipt

    gw = gateway(world)
    gw.anchorer.period = 3600.0
    served = list(paid_calls(world, prepaid=2, x402=0))
    own, _ = deploy(
        world.market.w3, load_artifact(ARTIFACTS, "UsageAnchors"), gw.identity, ARTIFACTS,
        world.market.contract.address,
    )  # fmt: skip
    forged_domain = receipts.Domain(world.market.deployment.chain_id, own.lower())
    with gw.reads() as s:
        receipt = proofs.to_receipt(proofs.receipt_row(s, served[0]))
    tree = MerkleTree([receipt.digest(forged_domain)])
    Anchors(world.market.w3, own, ARTIFACTS, signer=gw.identity).anchor(1, tree.root, 1)
    theirs = Anchors(world.market.w3, own, ARTIFACTS)
    assert check_receipt(receipt, forged_domain, [], theirs).ok  # its own contract says yes
    trusted = reader(world, gw)
    verdict = check_receipt(receipt, forged_domain, [], trusted)
    assert not verdict.ok and verdict.checks[0].name == "domain"
    assert "not the trusted" in verdict.checks[0].detail

    path = tmp_path / "forged-domain.json"
    path.write_text(json.dumps({**receipts.to_json(receipt, forged_domain), "proof": []}))
    refused = verify_cli(tmp_path, world, str(path))
    assert refused.returncode == 6 and "FAIL  domain" in refused.stdout, refused.stdout


def test_a_proof_is_given_only_to_whoever_holds_the_receipt(world: World):
    gw, ids = anchored_world(world, 2)
    receipt, proof = receipt_and_proof(gw, ids[0])
    leaf = "0x" + receipt.leaf(gw.receipt_domain()).hex()
    client: Any = world.client
    url = f"/api/v1/usage/{ids[0]}/proof"
    assert client.get(url).status_code == 400  # no leaf
    other = "0x" + receipt._replace(price=1).leaf(gw.receipt_domain()).hex()
    for wrong in (other, "0x" + "00" * 32):
        refused = client.get(url, query_string={"leaf": wrong})
        assert refused.status_code == 404 and refused.get_json()["error"] == "not_found"
    given = client.get(url, query_string={"leaf": leaf})
    assert given.status_code == 200 and given.get_json()["anchored"] is True
    assert given.get_json()["proof"] == ["0x" + p.hex() for p in proof]
    # the whole receipt is its buyer's alone
    stranger = sign_in(world, 4)
    hidden = client.get(f"/api/v1/usage/{ids[0]}", headers={"Authorization": f"Bearer {stranger}"})
    assert hidden.status_code == 404
