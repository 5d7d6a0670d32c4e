"""The hostile-model corpus: each file refused with its own error, and the process
keeps serving the next call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import errors
from inference.inspect import inspect_bytes
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
        RuntimeSettings(time_limit_s=1.0, arena_max_bytes=1 << 30, max_input_elements=1 << 20),
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


def test_oversized_input_is_refused_before_running(sessions, tmp_path):
    model = sessions.get("identity", _file(tmp_path, hm.identity()))
    with pytest.raises(errors.InputTooLarge, match="limit is 1048576"):
        sessions.run(model, {"x": np.zeros(((1 << 20) // 4 + 1, 4), np.float32)})


def test_hostile_file_never_loads_into_a_session(sessions, tmp_path):
    with pytest.raises(errors.ExternalData):
        sessions.get("ext", _file(tmp_path, hm.external_data()))
    assert "ext" not in sessions
