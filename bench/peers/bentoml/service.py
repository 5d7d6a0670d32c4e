"""BentoML's service for bench/load.py: the ONNX model behind BentoML 1.4's own JSON API,
with the gateway's session options (one intra-op and one inter-op thread, CPU).

    BENCH_MODEL=model.onnx .bench-peers/bentoml/bin/bentoml serve service:Onnx \
        --working-dir bench/peers/bentoml --host 127.0.0.1 --port PORT

POST /infer {"features": [[5.1, 3.5, 1.4, 0.2]]} -> {"label": [...], "probabilities": [...]}.
BENCH_WORKERS sets the worker processes (the gateway's 2 by default).
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort


# No access log: gunicorn (the gateway, the unpaid endpoint) writes none either.
@bentoml.service(
    workers=int(os.environ.get("BENCH_WORKERS", "2")),
    logging={"access": {"enabled": False}},
)
class Onnx:
    """One ONNX model; named inputs in, named outputs out, as JSON lists."""

    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"]
        )
        self.outputs = [o.name for o in self.session.get_outputs()]

    # async: the event loop runs the ~20 us call itself, no hop to a thread pool (BentoML
    # gives a sync API one thread per worker by default); the fastest shape for a small model
    @bentoml.api
    async def infer(self, features: list[list[float]]) -> dict[str, Any]:
        feeds = {"features": np.asarray(features, dtype=np.float32)}
        results = self.session.run(self.outputs, feeds)
        return {n: r.tolist() for n, r in zip(self.outputs, results, strict=True)}
