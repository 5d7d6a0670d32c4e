"""The demo models: rebuilt offline they equal the committed files, and each is valid."""

from __future__ import annotations

import numpy as np

from inference.demos import DEMO_DIR, build_all, minilm_model_path
from inference.inspect import inspect_bytes
from inference.sessions import SessionCache


def test_rebuilding_the_demos_gives_the_committed_bytes(tmp_path):
    for path in build_all(tmp_path):
        assert path.read_bytes() == (DEMO_DIR / path.name).read_bytes(), path.name


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
