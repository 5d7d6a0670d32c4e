"""The paid gateway end to end over HTTP (Flask's test client on the real app), with a
real anvil, real contracts, real SIWE signatures, the real store, cache and onnxruntime."""

from __future__ import annotations

import io

import numpy as np
import orjson

from app import create_app
from inference import codecs
from marketplace.devstack.anvil import start_anvil
from storage.local import LocalStore
from tests.support.paths import ANVIL_BIN
from tests.support.world import PRICE, World, buy, infer, sign_in


def test_the_walk(world):
    # list (fixture) -> buy on anvil -> sign in with SIWE -> redeem -> 10 calls -> 402
    listed = world.client.get("/api/v1/models?tag=tabular").get_json()
    assert listed["total"] == 1 and listed["models"][0]["name"] == "Iris"
    tx = buy(world, 2, 10)
    key = sign_in(world, 2)
    resp = world.client.post(
        "/api/v1/receipts", json={"tx_hash": tx}, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["credited"] == [
        {"model_id": world.model_id, "calls": 10, "remaining": 10}
    ]
    for i in range(10):
        r = infer(world, key)
        assert r.status_code == 200, r.get_json()
        assert r.headers["X-Credits-Remaining"] == str(9 - i)
        assert r.headers["X-Model-CID"] and len(r.headers["X-Inference-Id"]) == 32
        out = codecs.decode_response(r.data)
        assert out["label"].tolist() == [0]
    r = infer(world, key)
    assert r.status_code == 402
    body = r.get_json()
    assert body["code"] == "payment_required" and "/api/v1/receipts" in body["error"]
    accept, exact = body["accepts"]  # buy more credits, or pay this call with x402
    assert exact["scheme"] == "exact" and exact["amount"] == str(PRICE)
    assert accept["chain_id"] == 31337 and accept["model_id"] == world.model_id
    assert accept["marketplace"] == world.market.contract.address
    assert accept["price_per_call"] == str(PRICE)
    assert [c["function"] for c in accept["calls"]] == [
        "approve(address,uint256)",
        "purchase(uint256,uint256,uint256)",
    ]
    credits = world.client.get("/api/v1/credits", headers={"Authorization": f"Bearer {key}"})
    assert credits.get_json() == [{"model_id": world.model_id, "remaining": 0, "purchased": 10}]


def _post_receipt(world: World, key: str, tx: str):  # type: ignore[no-untyped-def]
    return world.client.post(
        "/api/v1/receipts", json={"tx_hash": tx}, headers={"Authorization": f"Bearer {key}"}
    )


def test_receipt_corpus(world):
    key = sign_in(world, 2)
    market, buyer = world.market, world.signers[2]
    # a reverted transaction (sent with a fixed gas limit, so it is mined)
    tx = market.contract.functions.purchase(world.model_id, 1, PRICE).build_transaction(
        {
            "from": buyer.address,
            "gas": 200_000,
            "nonce": market.w3.eth.get_transaction_count(buyer.address),
        }
    )
    reverted = market.w3.eth.send_raw_transaction(buyer.sign(tx)).to_0x_hex()
    world.mine(1)
    # a transaction to another contract, and one to ours that is not a purchase
    other = market.approve(buyer, 1)["transactionHash"].to_0x_hex()
    not_purchase = market.set_price(world.signers[1], world.model_id, PRICE)
    world.mine(1)
    # someone else's public purchase
    theirs = buy(world, 3, 2)
    # not yet confirmed: a purchase in the newest block with confirmations=1
    market.approve(buyer, PRICE)
    fresh = market.purchase(buyer, world.model_id, 1, PRICE)["transactionHash"].to_0x_hex()
    cases = {
        reverted: "receipt_reverted",
        other: "receipt_wrong_contract",
        not_purchase["transactionHash"].to_0x_hex(): "receipt_not_purchase",
        theirs: "receipt_not_buyer",
        fresh: "receipt_unconfirmed",
        "0x" + "ab" * 32: "receipt_not_found",
        "0x1234": "bad_request",
    }
    for tx_hash, code in cases.items():
        r = _post_receipt(world, key, tx_hash)
        assert r.get_json()["error"] == code, (tx_hash, r.get_json())
        assert r.get_json()["message"]
    # a replay of a redeemed receipt changes nothing
    mine_tx = buy(world, 2, 3)
    assert _post_receipt(world, key, mine_tx).status_code == 201
    r = _post_receipt(world, key, mine_tx)
    assert r.status_code == 409 and r.get_json()["error"] == "receipt_already_redeemed"
    credits = world.client.get("/api/v1/credits", headers={"Authorization": f"Bearer {key}"})
    assert credits.get_json()[0]["remaining"] == 3


def test_receipt_from_another_chain_is_refused(world, tmp_path):
    # the gateway points at a second chain with a different id: the receipt is foreign
    key = sign_in(world, 2)
    tx = buy(world, 2, 1)
    other = start_anvil(ANVIL_BIN, chain_id=999)
    try:
        settings = world.settings.model_copy(update={"rpc_url": other.rpc_url})
        client = create_app(settings).test_client()
        r = client.post(
            "/api/v1/receipts", json={"tx_hash": tx}, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.get_json()["error"] == "receipt_wrong_chain"
    finally:
        other.stop()


def test_failed_run_refunds_the_credit(world):
    key = sign_in(world, 2)
    _post_receipt(world, key, buy(world, 2, 2))
    # a request the model cannot run (wrong width) is refused and costs nothing
    body, headers = codecs.encode_request({"features": np.zeros((1, 3), np.float32)})
    r = world.client.post(
        f"/v2/models/{world.model_id}/infer",
        data=body,
        headers={**headers, "Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 400 and "dimension 1 must be 4" in r.get_json()["error"]
    assert r.headers["X-Credits-Remaining"] == "2"
    credits = world.client.get("/api/v1/credits", headers={"Authorization": f"Bearer {key}"})
    assert credits.get_json()[0]["remaining"] == 2


def reshaper() -> bytes:
    """y = Reshape(x, shape): valid, and fails inside onnxruntime for a bad `shape`."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshaper",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_run_failing_inside_onnxruntime_refunds(world):
    store = LocalStore(world.settings.store_dir)
    model_cid = store.add(io.BytesIO(reshaper()))
    card = store.add(io.BytesIO(orjson.dumps({"name": "reshaper"})))
    model_id, _ = world.market.list_model(world.signers[1], model_cid, card, PRICE)
    world.mine(1)
    world.index()
    key = sign_in(world, 2)
    market, buyer = world.market, world.signers[2]
    market.approve(buyer, 3 * PRICE)
    tx = market.purchase(buyer, model_id, 3, PRICE)["transactionHash"].to_0x_hex()
    world.mine(1)
    assert _post_receipt(world, key, tx).status_code == 201

    def call(shape: int):  # type: ignore[no-untyped-def]
        body, headers = codecs.encode_request(
            {"x": np.arange(4, dtype=np.float32), "shape": np.array([shape], np.int64)}
        )
        return world.client.post(
            f"/v2/models/{model_id}/infer",
            data=body,
            headers={**headers, "Authorization": f"Bearer {key}"},
        )

    ok = call(4)
    assert ok.status_code == 200 and ok.headers["X-Credits-Remaining"] == "2"
    failed = call(7)  # 4 values cannot take shape [7]: onnxruntime fails the run
    assert failed.status_code == 500 and failed.get_json()["code"] == "inference_failed"
    assert failed.headers["X-Credits-Remaining"] == "2"  # the credit came back
    credits = world.client.get("/api/v1/credits", headers={"Authorization": f"Bearer {key}"})
    assert {c["model_id"]: c["remaining"] for c in credits.get_json()}[model_id] == 2


def test_bad_key_and_unknown_model(world):
    r = infer(world, "mm_nope_nope")
    assert r.status_code == 401 and r.get_json()["code"] == "unauthenticated"
    key = sign_in(world, 2)
    r = world.client.post(
        "/v2/models/999/infer", data=b"{}", headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 404 and r.get_json()["code"] == "not_found"
    r = world.client.post(
        f"/v2/models/{world.model_id}/infer",
        data=b"{nope",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 400 and r.get_json()["code"] == "bad_input"


def test_openapi_covers_both_families(world):
    doc = world.client.get("/api/v1/openapi.json").get_json()
    paths = set(doc["paths"])
    assert "/api/v1/receipts" in paths and "/v2/models/{model_id}/infer" in paths
    assert "/api/v1/auth/verify" in paths and "/v2/health/ready" in paths
