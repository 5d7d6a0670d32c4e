"""Is a re-run bit-exact? What `modelmarket verify --input` relies on: the same model, the
same input, onnxruntime with the gateway's settings, the same output digest. Measured
here against what changes between the gateway's machine and a verifier's: the intra-op
thread count, the graph optimization level, and batch composition; per model, the
digest equal or not and the largest absolute difference. (The CPU's instruction set also
picks MLAS kernels: it cannot be varied on one machine, so it is stated, not measured.)

    .venv/bin/python -m bench.rerun
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from inference.demos import DEMO_DIR
from inference.digests import tensors_digest
from inference.runtime import RuntimeSettings, session_options

RNG = np.random.default_rng(7)


def wide_mlp(width: int = 1024, layers: int = 3) -> bytes:
    """A float MLP with wide GEMMs: where threads split the reductions, if anywhere."""
    nodes, inits, last = [], [], "x"
    for i in range(layers):
        w = numpy_helper.from_array(
            RNG.standard_normal((width, width)).astype(np.float32) / 32, f"w{i}"
        )
        b = numpy_helper.from_array(RNG.standard_normal(width).astype(np.float32), f"b{i}")
        inits += [w, b]
        nodes += [
            helper.make_node("Gemm", [last, f"w{i}", f"b{i}"], [f"g{i}"]),
            helper.make_node("Tanh", [f"g{i}"], [f"h{i}"]),
        ]
        last = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["n", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def models() -> dict[str, tuple[bytes, dict[str, np.ndarray]]]:
    def demo(name: str) -> bytes:
        return (DEMO_DIR / name).read_bytes()

    return {
        "iris": (demo("iris-classifier.onnx"), {"features": RNG.random((1, 4), np.float32) * 7}),
        "house-price": (
            demo("house-price-regressor.onnx"),
            {"features": RNG.random((1, 8), np.float32) * 10},
        ),
        "tiny-cnn": (demo("tiny-cnn.onnx"), {"image": RNG.random((1, 3, 32, 32), np.float32)}),
        "wide-mlp": (wide_mlp(), {"x": RNG.standard_normal((1, 1024)).astype(np.float32)}),
    }


def run(
    data: bytes, inputs: dict[str, np.ndarray], threads: int, level: str
) -> dict[str, np.ndarray]:
    options = session_options(RuntimeSettings(intra_op_threads=threads))
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def main() -> int:
    variants = [
        ("gateway (1 thread, all optimizations)", 1, "ORT_ENABLE_ALL"),
        ("same settings, again", 1, "ORT_ENABLE_ALL"),
        ("2 intra-op threads", 2, "ORT_ENABLE_ALL"),
        ("4 intra-op threads", 4, "ORT_ENABLE_ALL"),
        ("basic graph optimizations", 1, "ORT_ENABLE_BASIC"),
        ("no graph optimizations", 1, "ORT_DISABLE_ALL"),
    ]
    print(f"re-run against the gateway's run, onnxruntime {ort.__version__} (CPU)")
    print(f"{'model':<13}{'variant':<40}{'bit-exact':>10}{'max |diff|':>12}")
    exact_at_gateway_settings = True
    for label, (data, inputs) in models().items():
        ref = run(data, inputs, 1, "ORT_ENABLE_ALL")
        ref_digest = tensors_digest(ref)
        for text, threads, level in variants:
            out = run(data, inputs, threads, level)
            same = tensors_digest(out) == ref_digest
            diff = max(
                float(np.max(np.abs(out[k].astype(np.float64) - ref[k].astype(np.float64))))
                for k in ref
            )
            if threads == 1 and level == "ORT_ENABLE_ALL":
                exact_at_gateway_settings &= same
            print(f"{label:<13}{text:<40}{'yes' if same else 'NO':>10}{diff:>12.3g}")
        # a batch of 4 holding the same row: does batch composition change the row's output?
        batched = {k: np.repeat(v, 4, axis=0) for k, v in inputs.items()}
        out = run(data, batched, 1, "ORT_ENABLE_ALL")
        first = {k: v[:1] for k, v in out.items()}
        same = tensors_digest(first) == ref_digest
        diff = max(float(np.max(np.abs(first[k] - ref[k]))) for k in ref)
        text = "the row inside a batch of 4"
        print(f"{label:<13}{text:<40}{'yes' if same else 'NO':>10}{diff:>12.3g}")
    held = exact_at_gateway_settings
    print(
        f"goal: rerun bit-exact at the gateway's settings = {'yes' if held else 'no'}"
        f" (target = yes) {'met' if held else 'missed'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
