"""A listing whose model the validator refuses is offered nowhere (search, purchase
preparation, the 402, /v2) and says why; no unauthenticated request loads a model."""

from __future__ import annotations

import io

import orjson

from storage.local import LocalStore
from tests.fixtures import hostile_models
from tests.support.world import PRICE, World, buy, infer, sign_in


def _list(world: World, model: bytes, name: str) -> int:
    store = LocalStore(world.settings.store_dir)
    model_cid = store.add(io.BytesIO(model))
    card = store.add(io.BytesIO(orjson.dumps({"name": name, "tags": ["tabular"]})))
    model_id, _ = world.market.list_model(world.signers[1], model_cid, card, PRICE)
    world.mine(1)
    return model_id


def test_an_unrunnable_listing_is_offered_nowhere(world):
    bad = _list(world, hostile_models.external_data(), "reads /etc/passwd")
    client = world.client
    # before the indexer checked it: not offered either
    assert client.get(f"/v2/models/{bad}").status_code == 404  # not indexed at all yet
    world.index()

    search = client.get("/api/v1/models?tag=tabular").get_json()
    assert [m["model_id"] for m in search["models"]] == [world.model_id]
    page = client.get(f"/api/v1/models/{bad}").get_json()
    assert page["offered"] is False and page["model_status"] == "external_data"
    assert "external file" in page["model_error"]

    r = client.post(f"/api/v1/models/{bad}/purchase", json={"calls": 5})
    assert r.status_code == 409 and r.get_json()["error"] == "model_refused"
    assert "external_data" in r.get_json()["message"]

    for path in (f"/v2/models/{bad}", f"/v2/models/{bad}/ready"):
        r = client.get(path)
        assert r.status_code == 409 and r.get_json()["code"] == "model_refused"
        assert "external file" in r.get_json()["error"]

    # someone who bought on-chain anyway is neither served nor charged, nor offered a 402
    market, buyer = world.market, world.signers[2]
    market.approve(buyer, 2 * PRICE)
    tx = market.purchase(buyer, bad, 2, PRICE)["transactionHash"].to_0x_hex()
    world.mine(1)
    key = sign_in(world, 2)
    auth = {"Authorization": f"Bearer {key}"}
    assert client.post("/api/v1/receipts", json={"tx_hash": tx}, headers=auth).status_code == 201
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
    )
    r = client.post(f"/v2/models/{bad}/infer", data=body, headers=auth)
    assert r.status_code == 409 and r.get_json()["code"] == "model_refused"
    left = {
        c["model_id"]: c["remaining"]
        for c in client.get("/api/v1/credits", headers=auth).get_json()
    }
    assert left[bad] == 2


def test_unauthenticated_requests_never_load_a_model(world):
    bomb = _list(world, hostile_models.sparse_constant(), "sparse bomb")
    world.index()
    gateway = world.client.application.extensions["modelmarket"]
    for _ in range(3):
        meta = world.client.get(f"/v2/models/{world.model_id}")
        assert meta.status_code == 200
        assert meta.get_json()["inputs"][0]["name"] == "features"
        assert world.client.get(f"/v2/models/{world.model_id}/ready").status_code == 200
        r = world.client.get(f"/v2/models/{bomb}")
        assert r.status_code == 409 and r.get_json()["code"] != "model_pending"
    assert gateway.onnx_sessions.loads == 0  # metadata came from the signature stored at indexing


def test_a_delisted_listing_serves_its_buyers_but_is_sold_no_more(world):
    key = sign_in(world, 2)
    auth = {"Authorization": f"Bearer {key}"}
    tx = buy(world, 2, 1)
    assert (
        world.client.post("/api/v1/receipts", json={"tx_hash": tx}, headers=auth).status_code == 201
    )
    world.market.delist(world.signers[1], world.model_id)
    world.mine(1)
    world.index()
    client = world.client
    assert client.get("/api/v1/models").get_json()["total"] == 0
    assert client.get(f"/api/v1/models/{world.model_id}").get_json()["offered"] is False
    r = client.post(f"/api/v1/models/{world.model_id}/purchase", json={"calls": 1})
    assert r.status_code == 409 and r.get_json()["error"] == "listing_inactive"
    assert infer(world, key).status_code == 200  # the call already bought is served
    r = infer(world, key)
    assert r.status_code == 402 and r.get_json()["accepts"] == []
    assert "delisted" in r.get_json()["error"]
