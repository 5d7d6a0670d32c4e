"""The demo models: rebuilt offline they equal the committed files, and each is valid."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from sklearn.datasets import load_iris

from inference.demos import DEMO_DIR, build_all, minilm_model_path
from inference.inspect import inspect_bytes
from inference.sessions import SessionCache


def _numbers(model: onnx.ModelProto) -> tuple[bytes, np.ndarray]:
    """The model with its float values taken out (what is left: its structure), and
    those values."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    values: list[np.ndarray] = []
    for init in model.graph.initializer:
        values.append(numpy_helper.to_array(init).astype(np.float64).ravel())
        init.ClearField("raw_data")
        init.ClearField("float_data")
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.floats:
                values.append(np.array(attr.floats, np.float64))
                attr.ClearField("floats")
            if attr.HasField("f"):
                values.append(np.array([attr.f]))
                attr.ClearField("f")
    return model.SerializeToString(), np.concatenate(values) if values else np.zeros(0)


def test_rebuilding_the_demos_gives_the_committed_models(tmp_path):
    """Byte for byte, except where training's floating point differs with the CPU's
    instruction set (OpenBLAS picks its kernels per CPU: lbfgs lands ~1e-3 apart on
    another machine): then the same graph, the same values within 2%, and the same
    answers on the training data."""
    for path in build_all(tmp_path):
        built, committed = path.read_bytes(), (DEMO_DIR / path.name).read_bytes()
        if built == committed:
            continue
        (shape_a, values_a), (shape_b, values_b) = (
            _numbers(onnx.load_from_string(m)) for m in (built, committed)
        )
        assert shape_a == shape_b, path.name
        np.testing.assert_allclose(values_a, values_b, rtol=0.02, atol=0.02, err_msg=path.name)
        if path.name == "iris-classifier.onnx":
            x = load_iris(return_X_y=True)[0].astype(np.float32)
            cache = SessionCache(1 << 30)
            built_model = cache.get("built", path)
            committed_model = cache.get("committed", DEMO_DIR / path.name)
            labels = [
                cache.run(m, {"features": x})["label"] for m in (built_model, committed_model)
            ]
            assert (labels[0] == labels[1]).all()


def test_demos_inspect_and_run():
    cache = SessionCache(1 << 30)
    iris = cache.get("iris", DEMO_DIR / "iris-classifier.onnx")
    out = cache.run(
        iris, {"features": np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)}
    )
    assert out["label"].tolist() == [0, 2]  # setosa, virginica
    cnn = cache.get("cnn", DEMO_DIR / "tiny-cnn.onnx")
    probs = cache.run(cnn, {"image": np.ones((2, 3, 32, 32), np.float32)})["probabilities"]
    assert probs.shape == (2, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    reg = cache.get("reg", DEMO_DIR / "house-price-regressor.onnx")
    assert cache.run(reg, {"features": np.zeros((3, 8), np.float32)})["price"].shape == (3, 1)


def test_minilm_ships_offline_and_embeds():
    path = minilm_model_path()
    assert path is not None and path.stat().st_size > 20_000_000
    info = inspect_bytes(path.read_bytes())
    assert [i.name for i in info.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    cache = SessionCache(1 << 30)
    model = cache.get("minilm", path)
    ids = np.array([[101, 7592, 2088, 102]], np.int64)
    hidden = cache.run(
        model,
        {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        },
    )["last_hidden_state"]
    assert hidden.shape == (1, 4, 384) and np.isfinite(hidden).all()
