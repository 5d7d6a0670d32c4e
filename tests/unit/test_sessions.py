"""The session cache: one load per model under concurrency, bounded in bytes (LRU)."""

from __future__ import annotations

import threading

import numpy as np

from inference.demos import DEMO_DIR
from inference.sessions import RuntimeSettings, SessionCache

IRIS = DEMO_DIR / "iris-classifier.onnx"
CNN = DEMO_DIR / "tiny-cnn.onnx"
REG = DEMO_DIR / "house-price-regressor.onnx"


def test_concurrent_gets_load_once():
    cache = SessionCache(1 << 30)
    barrier = threading.Barrier(8)
    got = []

    def worker() -> None:
        barrier.wait()
        got.append(cache.get("cnn", CNN))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 8 and len({id(m) for m in got}) == 1
    assert cache.loads == 1


def test_byte_bound_evicts_least_recently_used():
    sizes = {p: p.stat().st_size for p in (IRIS, CNN, REG)}
    cache = SessionCache(sizes[CNN] + sizes[REG])
    cache.get("iris", IRIS)
    cache.get("cnn", CNN)
    cache.get("iris", IRIS)  # iris is now the most recent
    cache.get("reg", REG)  # over the bound: the least recent (cnn) goes
    assert "cnn" not in cache and "iris" in cache and "reg" in cache
    assert cache.used_bytes <= sizes[CNN] + sizes[REG]


def test_threads_come_from_settings():
    cache = SessionCache(1 << 30, RuntimeSettings(intra_op_threads=2, inter_op_threads=1))
    model = cache.get("iris", IRIS)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    out = cache.run(model, {"features": np.zeros((1, 4), np.float32)})
    assert set(out) == {"label", "probabilities"}
