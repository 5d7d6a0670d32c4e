"""OIP v2 codecs: property-based round trips for every datatype and random shapes,
JSON and binary agreeing, and bad requests named by input."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inference import codecs
from inference.errors import BadInput, InputTooLarge
from inference.inspect import ModelInfo, TensorSpec

NUMERIC = [t for t in codecs.NUMPY_TYPES if t not in ("BYTES",)]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def tensors(draw: st.DrawFn, json_safe: bool) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from([*NUMERIC, "BYTES"]))
    shape = draw(shapes)
    if datatype == "BYTES":
        text = st.text(max_size=8) if json_safe else st.binary(max_size=8)
        items = draw(st.lists(text, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        array = np.array(
            [x.encode() if isinstance(x, str) else x for x in items], dtype=object
        ).reshape(shape)
        return datatype, array
    dtype = codecs.NUMPY_TYPES[datatype]
    elements = None
    if dtype.kind == "f":
        elements = st.floats(
            width=dtype.itemsize * 8, allow_nan=not json_safe, allow_infinity=not json_safe
        )
    return datatype, draw(hnp.arrays(dtype, shape, elements=elements))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype == object:
        return [bytes(x) for x in a.ravel()] == [bytes(x) for x in b.ravel()]
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@settings(max_examples=300, deadline=None)
@given(st.lists(tensors(json_safe=False), min_size=1, max_size=4))
def test_binary_round_trip(items):
    inputs = {f"in{i}": array for i, (_, array) in enumerate(items)}
    body, headers = codecs.encode_request(inputs, binary=True)
    decoded = codecs.decode_request(body, int(headers[codecs.HEADER_LENGTH]))
    for name, array in inputs.items():
        assert _same(decoded.inputs[name], array), name


@settings(max_examples=300, deadline=None)
@given(st.lists(tensors(json_safe=True), min_size=1, max_size=4))
@example([("UINT64", np.array([0, 2**63], dtype=np.uint64))])  # found by hypothesis once
def test_json_and_binary_give_the_same_tensors(items):
    inputs = {f"in{i}": array for i, (_, array) in enumerate(items)}
    body, _ = codecs.encode_request(inputs, binary=False)
    from_json = codecs.decode_request(body).inputs
    body, headers = codecs.encode_request(inputs, binary=True)
    from_binary = codecs.decode_request(body, int(headers[codecs.HEADER_LENGTH])).inputs
    for name, array in inputs.items():
        assert _same(from_json[name], array), name
        assert _same(from_binary[name], array), name


@settings(max_examples=200, deadline=None)
@given(st.lists(tensors(json_safe=True), min_size=1, max_size=3), st.booleans())
def test_response_round_trip(items, binary):
    outputs = {f"out{i}": array for i, (_, array) in enumerate(items)}
    body, headers = codecs.encode_response("m", outputs, binary=set(outputs) if binary else None)
    length = headers.get(codecs.HEADER_LENGTH)
    decoded = codecs.decode_response(body, int(length) if length else None)
    for name, array in outputs.items():
        assert _same(decoded[name], array), name


INFO = ModelInfo(
    "0" * 64,
    1,
    8,
    {"ai.onnx": 17},
    "t",
    [TensorSpec("image", "FP32", [-1, 3, 2, 2]), TensorSpec("k", "INT64", [1])],
    [TensorSpec("probabilities", "FP32", [-1, 10])],
)


def _req(inputs: list[dict]) -> bytes:
    return orjson.dumps({"inputs": inputs})


GOOD_IMAGE = {"name": "image", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.0] * 12}
GOOD_K = {"name": "k", "datatype": "INT64", "shape": [1], "data": [3]}


def test_good_request_passes_the_signature():
    arrays = codecs.check_inputs(INFO, codecs.decode_request(_req([GOOD_IMAGE, GOOD_K])))
    assert arrays["image"].shape == (1, 3, 2, 2) and arrays["k"].dtype == np.int64


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (orjson.dumps({"inputs": []}), "non-empty 'inputs'"),
        (_req([{**GOOD_IMAGE, "datatype": "FP128"}, GOOD_K]), "input 'image': datatype 'FP128'"),
        (_req([{**GOOD_IMAGE, "shape": [1, -3, 2, 2]}, GOOD_K]), "input 'image': 'shape'"),
        (_req([{**GOOD_IMAGE, "data": [0.0] * 11}, GOOD_K]), "input 'image': 11 values"),
        (_req([{**GOOD_IMAGE, "data": ["a"] * 12}, GOOD_K]), "input 'image': 'data' must hold"),
        (_req([GOOD_IMAGE, {**GOOD_K, "data": [1.5]}]), "input 'k': INT64 data must be integers"),
        (_req([GOOD_IMAGE, GOOD_IMAGE]), "input 'image' is given twice"),
        (_req([{"name": "image", "datatype": "FP32", "shape": [1]}]), "neither 'data'"),
    ],
    ids=["json", "empty", "datatype", "shape", "count", "strings", "float-int", "twice", "no-data"],
)
def test_bad_requests_name_the_problem(body, message):
    with pytest.raises(BadInput) as info:
        codecs.decode_request(body)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([GOOD_IMAGE], "input 'k' is missing"),
        ([GOOD_IMAGE, GOOD_K, {**GOOD_K, "name": "extra"}], "no input named 'extra'"),
        ([{**GOOD_IMAGE, "datatype": "FP64"}, GOOD_K], "input 'image' must be FP32, not FP64"),
        ([{**GOOD_IMAGE, "shape": [1, 12]}, GOOD_K], "input 'image' must have rank 4"),
        ([{**GOOD_IMAGE, "shape": [3, 1, 2, 2]}, GOOD_K], "input 'image' dimension 1 must be 3"),
    ],
    ids=["missing", "unknown", "type", "rank", "dim"],
)
def test_signature_checks_name_the_input(inputs, message):
    with pytest.raises(BadInput) as info:
        codecs.check_inputs(INFO, codecs.decode_request(_req(inputs)))
    assert message in info.value.message


def test_binary_size_must_match_the_shape():
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "k",
                    "datatype": "INT64",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    with pytest.raises(BadInput, match="input 'k': 8 bytes of binary data"):
        codecs.decode_request(head + b"\x00" * 8, len(head))
    with pytest.raises(BadInput, match="past the body"):
        codecs.decode_request(head + b"\x00" * 4, len(head))


def test_element_limit_applies_before_allocation():
    body = _req([{"name": "x", "datatype": "FP32", "shape": [1 << 20, 1 << 20], "data": []}])
    with pytest.raises(InputTooLarge, match="limit is"):
        codecs.decode_request(body)


def test_metadata_from_the_signature():
    assert codecs.model_metadata("7", INFO) == {
        "name": "7",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [-1, 3, 2, 2]},
            {"name": "k", "datatype": "INT64", "shape": [1]},
        ],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }


# Hostile request bodies: whatever the JSON says, the answer is a clear BadInput or
# InputTooLarge (a 400/413 naming the problem), never another exception (a 500).
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)
_dims = st.integers(min_value=-1, max_value=2**66) | st.sampled_from([0, 1, 2**32, 2**63])
_input = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "", 3]),
        "datatype": st.sampled_from(["FP32", "INT64", "UINT64", "BOOL", "BYTES", "FP16", "X"]),
        "shape": st.lists(_dims, max_size=70) | _json,
    },
    optional={"data": _json, "parameters": _json},
)
_doc = st.fixed_dictionaries(
    {"inputs": st.lists(_input, min_size=1, max_size=3) | _json},
    optional={"outputs": _json, "id": _json, "parameters": _json},
)


@settings(max_examples=400, deadline=None)
@given(doc=_doc, binary=st.binary(max_size=64), header=st.booleans())
def test_no_request_body_raises_anything_but_a_clear_error(doc, binary, header):
    head = json.dumps(doc).encode()  # stdlib: integers past 64 bits, NaN
    try:
        codecs.decode_request(head + binary if header else head, len(head) if header else None)
    except (BadInput, InputTooLarge) as exc:
        assert exc.message


@pytest.mark.parametrize(
    "shape",
    [
        [4294967296, 4294967296, 0],
        [2**63, 0],
        [0] * 33,
        [2**64, 0],
        [0, 2**40, 2**40],
        # every dimension under the limit, none holding data, their product past numpy's
        [0, 213759, 1769359, 6096624],
    ],
)
def test_absurd_shapes_with_no_data_are_refused(shape):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": []}]})
    with pytest.raises((BadInput, InputTooLarge)) as info:
        codecs.decode_request(body)
    assert "shape" in info.value.message or "dimension" in info.value.message
