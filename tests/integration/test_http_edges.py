"""HTTP edges of the real app: hostile shapes are a 400 not a 500, every 405 says
`Allow`, every JSON answer says `nosniff`, and on /v2 the Open Inference Protocol's error
shape carries a human message (what tritonclient shows its user: the code and how to
pay), with the stable code and `accepts` beside it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from werkzeug.serving import make_server

from app import create_app
from inference import codecs
from marketplace.devstack.ports import free_port
from tests.support.world import World, buy, sign_in


def _paid(world: World, key: str, body: bytes):  # type: ignore[no-untyped-def]
    return world.client.post(
        f"/v2/models/{world.model_id}/infer",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    "shape", [[4294967296, 4294967296, 0], [2**63, 0], [0] * 40, [-1, 4], [1.5, 4]]
)
def test_hostile_shapes_are_a_clear_400_and_cost_nothing(world, shape):
    key = sign_in(world, 2)
    world.client.post(
        "/api/v1/receipts",
        json={"tx_hash": buy(world, 2, 1)},
        headers={"Authorization": f"Bearer {key}"},
    )
    body = orjson.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": shape, "data": []}]}
    )
    r = _paid(world, key, body)
    assert r.status_code in (400, 413), r.get_json()
    answer = r.get_json()
    assert answer["code"] in ("bad_input", "input_too_large")
    assert answer["error"].startswith(f"[{answer['code']}]")
    credits = world.client.get("/api/v1/credits", headers={"Authorization": f"Bearer {key}"})
    assert credits.get_json()[0]["remaining"] == 1  # refused before the call was taken


def test_405_says_allow_and_json_says_nosniff(world):
    for path, allowed in [
        ("/api/v1/auth/nonce", {"POST", "OPTIONS"}),
        (f"/v2/models/{world.model_id}/infer", {"POST", "OPTIONS"}),
    ]:
        r = world.client.put(path)
        assert r.status_code == 405
        assert set(r.headers["Allow"].replace(" ", "").split(",")) == allowed
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    for r in (
        world.client.get("/api/v1/models"),
        world.client.get("/api/v1/models/999"),
        world.client.get("/v2/health/live"),
        world.client.get("/nowhere"),
    ):
        assert r.mimetype == "application/json"
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_api_v1_errors_keep_the_stable_code_in_error(world):
    r = world.client.get("/api/v1/models/999")
    assert r.get_json() == {"error": "not_found", "message": "model 999 is not listed"}


@pytest.fixture
def served(world: World) -> Iterator[str]:
    """The real app on a real HTTP server (loopback, free port)."""
    server = make_server("127.0.0.1", free_port(), create_app(world.settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


def test_tritonclient_users_read_what_to_do_on_a_402(world, served):
    key = sign_in(world, 2)
    client = httpclient.InferenceServerClient(url=served)
    features = httpclient.InferInput("features", [1, 4], "FP32")
    features.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer(str(world.model_id), [features], headers={"Authorization": f"Bearer {key}"})
    shown = str(info.value)
    assert "[402]" in shown and "payment_required" in shown
    assert "/api/v1/receipts" in shown and "purchase" in shown
    # the machine-readable parts travel beside it
    r = world.client.post(
        f"/v2/models/{world.model_id}/infer",
        data=orjson.dumps(
            {
                "inputs": [
                    {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
                ]
            }
        ),
        headers={"Authorization": f"Bearer {key}"},
    )
    body = r.get_json()
    assert r.status_code == 402 and body["code"] == "payment_required" and body["accepts"]


def test_search_takes_its_text_literally_and_bounded(world):
    assert world.client.get("/api/v1/models?q=iri").get_json()["total"] == 1
    for wildcard in ("%25", "_", "%25%25"):  # LIKE wildcards match themselves only
        assert world.client.get(f"/api/v1/models?q={wildcard}").get_json()["total"] == 0
    r = world.client.get("/api/v1/models?q=" + "a" * 101)
    assert r.status_code == 400 and r.get_json()["error"] == "bad_request"
    page = world.client.get("/api/v1/models?tag=tabular&per_page=1&page=1").get_json()
    assert page["total"] == 1 and [m["name"] for m in page["models"]] == ["Iris"]
    assert world.client.get("/api/v1/models?page=2").get_json() == {
        "total": 1,
        "page": 2,
        "per_page": 20,
        "models": [],
    }


def test_big_json_is_refused_before_parsing_and_binary_still_works(world):
    key = sign_in(world, 2)
    auth = {"Authorization": f"Bearer {key}"}
    world.client.post("/api/v1/receipts", json={"tx_hash": buy(world, 2, 1)}, headers=auth)
    small = world.settings.model_copy(update={"max_infer_json_bytes": 1000})
    client = create_app(small).test_client()
    rows = np.tile(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32), (200, 1))
    as_json = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [20, 4],
                    "data": rows.ravel().tolist(),
                }
            ]
        }
    )
    r = client.post(f"/v2/models/{world.model_id}/infer", data=as_json, headers=auth)
    assert r.status_code == 413 and r.get_json()["code"] == "input_too_large"
    assert "binary" in r.get_json()["error"]
    body, headers = codecs.encode_request({"features": rows}, binary=True)
    r = client.post(f"/v2/models/{world.model_id}/infer", data=body, headers={**headers, **auth})
    assert r.status_code == 200, r.get_json()
