"""The hostile-model corpus: each file refused with its own error, and the process
keeps serving the next call."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from inference import codecs, errors
from inference.demos import DEMO_DIR
from inference.inspect import ModelInfo, inspect_bytes
from inference.limits import Limits
from inference.probe import probe_load
from inference.sessions import RuntimeSettings, SessionCache
from tests.fixtures import hostile_models as hm

CORPUS = [
    (hm.external_data, errors.ExternalData, "keeps its data in an external file"),
    (hm.huge_declared_dims, errors.AbsurdShape, "declares a dimension of 1000000000000"),
    (hm.huge_initializer, errors.InitializerTooLarge, "declares [100000, 100000]"),
    (hm.invalid_graph, errors.InvalidGraph, "the ONNX graph is invalid"),
    (hm.random_bytes, errors.NotOnnx, "not an ONNX model"),
    (hm.truncated, errors.NotOnnx, "not an ONNX model"),
]


@pytest.mark.parametrize(("build", "error", "text"), CORPUS, ids=[c[0].__name__ for c in CORPUS])
def test_refused_at_inspection(build, error, text):
    with pytest.raises(error) as info:
        inspect_bytes(build())
    assert text in info.value.message


def test_each_refusal_has_its_own_code():
    codes = set()
    for build, _error, _text in CORPUS:
        with pytest.raises(errors.InvalidModel) as info:
            inspect_bytes(build())
        codes.add(info.value.code)
    assert codes == {
        "external_data",
        "absurd_shape",
        "initializer_too_large",
        "invalid_graph",
        "not_onnx",
    }


@pytest.fixture(scope="module")
def sessions() -> SessionCache:
    # arena_max_bytes only applies if this is the first SessionCache in the process;
    # the default (4 GiB) is far below the bomb's 16 GiB either way.
    return SessionCache(
        64 << 20,
        RuntimeSettings(time_limit_s=1.0, arena_max_bytes=1 << 30),
    )


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    return path


def _still_serving(sessions: SessionCache, tmp_path: Path) -> None:
    ok = sessions.get("identity", _file(tmp_path / "..", hm.identity()))
    out = sessions.run(ok, {"x": np.zeros((1, 4), np.float32)})
    assert out["y"].tolist() == [[1.0, 1.0, 1.0, 1.0]]


def test_run_past_the_time_limit_is_stopped(sessions, tmp_path):
    model = sessions.get("loop", _file(tmp_path, hm.endless_loop()))
    with pytest.raises(errors.InferenceTimeout, match="longer than 1 s and was stopped"):
        sessions.run(model, {"x": np.zeros(1, np.float32)})
    _still_serving(sessions, tmp_path)


def test_memory_bomb_is_refused(sessions, tmp_path):
    model = sessions.get("bomb", _file(tmp_path, hm.memory_bomb()))
    with pytest.raises(errors.ResourceExhausted, match="more memory than the gateway allows"):
        sessions.run(model, {"shape": np.array([1 << 32], np.int64)})
    _still_serving(sessions, tmp_path)


def test_oversized_input_is_refused_before_running():
    # two inputs, each under the cap, over it together: refused as decoded, before any
    # array is allocated or a session sees them
    half = (1 << 20) // 2 + 1
    body = orjson.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [half], "data": [0.0] * half}
                for n in ("x", "y")
            ]
        }
    )
    limit = 1 << 20
    with pytest.raises(errors.InputTooLarge, match="limit is 1048576"):
        codecs.decode_request(body, max_elements=limit)


def test_hostile_file_never_loads_into_a_session(sessions, tmp_path):
    with pytest.raises(errors.ExternalData):
        sessions.get("ext", _file(tmp_path, hm.external_data()))
    assert "ext" not in sessions


# Load-time bombs: tiny files onnxruntime would expand at session creation.

LOAD_BOMBS = [
    (hm.sparse_constant, "densifies to [1073741824] = 4294967296 bytes"),
    (hm.sparse_initializer, "sparse initializer 'w' is stored sparse in 12 bytes"),
    (hm.sparse_constants, "materialises 1610612736 bytes of tensors at load"),
    (hm.sparse_in_loop_body, "subgraph 'body' of node 'Loop'"),
    (hm.sparse_in_function, "local function 'com.microsoft:f0'"),
    (hm.function_fanout, "materialises 2147483648 bytes of tensors at load"),
    (hm.sparse_tensors_attribute, "attribute 'junk' of node 'Identity'"),
]


@pytest.mark.parametrize(("build", "text"), LOAD_BOMBS, ids=[b[0].__name__ for b in LOAD_BOMBS])
def test_load_bombs_are_sized_and_refused_at_inspection(build, text):
    data = build()
    assert len(data) < 100_000
    start = time.perf_counter()
    with pytest.raises(errors.LoadSizeTooLarge) as info:
        inspect_bytes(data)
    assert time.perf_counter() - start < 0.5  # sized from the file, never loaded
    assert info.value.code == "load_size_too_large"
    assert text in info.value.message


def test_inlined_nodes_are_counted():
    data = hm.function_fanout(levels=13, constant_elements=256)  # 2 KB, ~5 s to load
    inspect_bytes(data)  # 40,959 nodes inlined: under the default limit
    with pytest.raises(errors.LoadSizeTooLarge, match="40959 nodes once its local functions"):
        inspect_bytes(data, Limits(max_load_nodes=10_000))


def test_signature_round_trips_through_its_stored_form():
    info = inspect_bytes(hm.identity())
    assert ModelInfo.from_dict(info.to_dict()) == info


def test_error_codes_are_unique():
    def every(cls: type[errors.InferenceError]) -> list[type[errors.InferenceError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in every(sub))]

    codes = [c.code for c in every(errors.InferenceError)]
    assert len(codes) == len(set(codes))
    assert {"load_size_too_large", "model_load_too_costly", "model_load_timeout"} <= set(codes)


# The load probe: a child process bounded in memory and time.


def test_probe_reports_a_normal_load():
    report = probe_load(DEMO_DIR / "iris-classifier.onnx", memory_bytes=256 << 20, timeout=30)
    assert 0 < report.peak_bytes < 64 << 20
    assert 0 < report.seconds < 5


def test_probe_refuses_a_sparse_bomb_over_budget():
    data = hm.sparse_constant(1 << 26)  # 116 bytes -> 256 MiB: within inspection's limits
    inspect_bytes(data)
    with pytest.raises(errors.ModelLoadTooCostly, match="134217728-byte budget") as info:
        probe_load(data, memory_bytes=128 << 20, timeout=30)
    assert info.value.code == "model_load_too_costly"


def test_probe_counts_constant_folding():
    data = hm.folded_constant(1 << 24)  # folds into 64 MiB tensors at load
    inspect_bytes(data)
    report = probe_load(data, memory_bytes=512 << 20, timeout=30)
    assert report.peak_bytes > 128 << 20  # ConstantOfShape and Neg both materialised
    with pytest.raises(errors.ModelLoadTooCostly):
        probe_load(data, memory_bytes=96 << 20, timeout=30)


def test_probe_stops_a_slow_load_at_the_timeout():
    data = hm.function_fanout(levels=13, constant_elements=256)
    start = time.perf_counter()
    with pytest.raises(errors.ModelLoadTimeout, match="longer than 1 s") as info:
        probe_load(data, memory_bytes=512 << 20, timeout=1.0)
    assert info.value.code == "model_load_timeout"
    assert time.perf_counter() - start < 1.0 + 10  # plus the child's start


def test_probe_reports_what_onnxruntime_refuses():
    with pytest.raises(errors.ModelLoadFailed, match="Could not find an implementation"):
        probe_load(hm.unsupported_kernel(), memory_bytes=256 << 20, timeout=30)


def _named(name: str, inputs: int = 1) -> bytes:
    from onnx import TensorProto, helper

    names = [name] if inputs == 1 else [f"x{i}" for i in range(inputs)]
    graph = helper.make_graph(
        [helper.make_node("Identity", [names[0]], ["y"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("model", "code"),
    [
        (_named("x" * 100_000), "invalid_graph"),  # served to anyone as metadata
        (_named("in\x00put"), "invalid_graph"),  # PostgreSQL cannot store it
        (_named("x", inputs=300), "invalid_graph"),
    ],
    ids=["long-name", "nul-name", "many-inputs"],
)
def test_the_signature_is_bounded_and_printable(model, code):
    with pytest.raises(errors.InvalidModel) as info:
        inspect_bytes(model)
    assert info.value.code == code
    assert len(info.value.message) < 300 and "\x00" not in info.value.message
