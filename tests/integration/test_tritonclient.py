"""tritonclient.http, unchanged, against a minimal test server built on our codecs: the
same outputs as a direct session.run, with JSON and with binary tensors."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from flask import Flask, Response, request
from werkzeug.serving import make_server

from inference import codecs
from inference.demos import DEMO_DIR, minilm_model_path
from inference.errors import InferenceError
from inference.sessions import SessionCache
from marketplace.devstack.ports import free_port

MODELS = {
    "iris": DEMO_DIR / "iris-classifier.onnx",
    "cnn": DEMO_DIR / "tiny-cnn.onnx",
    "minilm": minilm_model_path(),
}


def build_server(sessions: SessionCache) -> Flask:
    """The smallest OIP v2 server over our codecs (test scaffolding, not the gateway)."""
    app = Flask("oip-test")

    @app.get("/v2/health/ready")
    def ready() -> Response:
        return Response(status=200)

    @app.get("/v2/models/<name>")
    def metadata(name: str) -> Response:
        model = sessions.get(name, MODELS[name])
        return Response(
            orjson.dumps(codecs.model_metadata(name, model.info)), mimetype="application/json"
        )

    @app.post("/v2/models/<name>/infer")
    def infer(name: str) -> Response:
        model = sessions.get(name, MODELS[name])
        length = request.headers.get(codecs.HEADER_LENGTH)
        try:
            req = codecs.decode_request(request.get_data(), int(length) if length else None)
            arrays = codecs.check_inputs(model.info, req)
            outputs = sessions.run(model, arrays, req.outputs or None)
        except InferenceError as exc:
            return Response(
                orjson.dumps({"error": exc.message}), status=400, mimetype="application/json"
            )
        body, headers = codecs.encode_response(
            name, outputs, request_id=req.id, binary=req.binary_outputs
        )
        return Response(body, headers=headers)

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    httpd = make_server("127.0.0.1", port, build_server(SessionCache(1 << 30)), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{port}"
    httpd.shutdown()
    thread.join(10)


def _inputs(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "iris":
        return {"features": rng.random((5, 4), dtype=np.float32) * 7}
    if name == "cnn":
        return {"image": rng.random((2, 3, 32, 32), dtype=np.float32)}
    ids = rng.integers(1000, 5000, (2, 12), dtype=np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", list(MODELS))
def test_tritonclient_gets_what_session_run_gives(server, name, binary):
    client = httpclient.InferenceServerClient(url=server)
    assert client.is_server_ready()
    meta = client.get_model_metadata(name)
    arrays = _inputs(name)
    inputs = []
    for spec in meta["inputs"]:
        arr = arrays[spec["name"]]
        item = httpclient.InferInput(spec["name"], list(arr.shape), spec["datatype"])
        item.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(item)
    outputs = [
        httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in meta["outputs"]
    ]
    result = client.infer(name, inputs, outputs=outputs, headers={"Authorization": "Bearer test"})
    direct = SessionCache(1 << 30).get(name, MODELS[name]).session.run(None, arrays)
    for spec, want in zip(meta["outputs"], direct, strict=True):
        got = result.as_numpy(spec["name"])
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    client.close()


def test_bad_input_reaches_the_client_as_an_error(server):
    client = httpclient.InferenceServerClient(url=server)
    item = httpclient.InferInput("features", [1, 3], "FP32")
    item.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(Exception, match="input 'features' dimension 1 must be 4"):
        client.infer("iris", [item])
    client.close()
