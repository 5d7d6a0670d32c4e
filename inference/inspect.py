"""Validate an ONNX file before it is ever listed or run, and extract its signature for
the model card: inputs/outputs (names, element types, shapes with symbolic dims), opsets,
producer, size and sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from inference.errors import (
    AbsurdShape,
    ExternalData,
    InitializerTooLarge,
    InvalidGraph,
    ModelTooLarge,
    NotOnnx,
    UnsupportedOpset,
    UnsupportedType,
)

# ONNX element type -> Open Inference Protocol datatype name
OIP_DATATYPES: dict[int, str] = {
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.STRING: "BYTES",
}

# Operator-set domains a listed model may use; anything else needs custom kernels.
ALLOWED_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}


@dataclass(frozen=True)
class Limits:
    """What a model may declare. Defaults suit a marketplace of small and mid models."""

    max_file_bytes: int = 1 << 30
    min_opset: int = 7
    max_opset: int = onnx.defs.onnx_opset_version()
    max_dim: int = 1 << 24  # any single static dimension
    max_tensor_elements: int = 1 << 28  # a declared input/output/initializer
    max_initializer_bytes: int = 1 << 30


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: OIP datatype and shape (-1 where a dim is not fixed)."""

    name: str
    datatype: str
    shape: list[int]
    dim_names: list[str | None] = field(default_factory=list)

    def to_metadata(self) -> dict[str, Any]:
        """The `{name, datatype, shape}` entry of OIP model metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(frozen=True)
class ModelInfo:
    """What the model card and the gateway need to know about a model file."""

    sha256: str
    size: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the model card)."""
        return asdict(self)


def inspect_bytes(data: bytes, limits: Limits | None = None) -> ModelInfo:
    """Validate `data` as an ONNX model and return its signature; raises an InvalidModel
    subclass naming the problem."""
    limits = limits or Limits()
    if len(data) > limits.max_file_bytes:
        raise ModelTooLarge(f"the model is {len(data)} bytes; the limit is {limits.max_file_bytes}")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise NotOnnx(f"the file is not an ONNX model ({type(exc).__name__})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise NotOnnx("the file is not an ONNX model (no graph or no opset)")

    opsets = _check_opsets(model, limits)
    for where, tensor in _all_tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise ExternalData(
                f"{where} '{tensor.name}' keeps its data in an external file; a listed model"
                " must be self-contained"
            )
        _check_initializer(where, tensor, limits)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise InvalidGraph(f"the ONNX graph is invalid: {first}") from None

    initializer_names = {t.name for t in model.graph.initializer}
    inputs = [
        _spec(v, limits, "input") for v in model.graph.input if v.name not in initializer_names
    ]
    outputs = [_spec(v, limits, "output") for v in model.graph.output]
    return ModelInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        ir_version=model.ir_version,
        opsets=opsets,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=inputs,
        outputs=outputs,
    )


def _check_opsets(model: onnx.ModelProto, limits: Limits) -> dict[str, int]:
    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        domain = entry.domain or ""
        if domain not in ALLOWED_DOMAINS:
            raise UnsupportedOpset(f"operator domain '{domain}' is not supported")
        if domain in ("", "ai.onnx") and not (
            limits.min_opset <= entry.version <= limits.max_opset
        ):
            raise UnsupportedOpset(
                f"opset {entry.version} is outside the supported"
                f" {limits.min_opset}..{limits.max_opset}"
            )
        opsets[domain or "ai.onnx"] = int(entry.version)
    return opsets


def _all_tensors(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[str, TensorProto]]:
    """Every tensor stored in the graph: initializers, sparse ones, node attributes, and
    the same inside subgraphs (If/Loop/Scan bodies)."""
    for t in graph.initializer:
        yield f"{prefix}initializer", t
    for s in graph.sparse_initializer:
        yield f"{prefix}sparse initializer", s.values
        yield f"{prefix}sparse initializer", s.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield f"{prefix}attribute of node '{node.name or node.op_type}'", attr.t
            for t in attr.tensors:
                yield f"{prefix}attribute of node '{node.name or node.op_type}'", t
            if attr.HasField("g"):
                yield from _all_tensors(attr.g, f"{prefix}subgraph ")
            for g in attr.graphs:
                yield from _all_tensors(g, f"{prefix}subgraph ")


def _elements(dims: list[int]) -> int:
    total = 1
    for d in dims:
        total *= max(d, 1)
    return total


def _check_initializer(where: str, tensor: TensorProto, limits: Limits) -> None:
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise AbsurdShape(f"{where} '{tensor.name}' has a negative dimension {dims}")
    elements = _elements(dims)
    itemsize = (
        onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        if (tensor.data_type in OIP_DATATYPES and tensor.data_type != TensorProto.STRING)
        else 1
    )
    declared = elements * itemsize
    if elements > limits.max_tensor_elements or declared > limits.max_initializer_bytes:
        raise InitializerTooLarge(
            f"{where} '{tensor.name}' declares {dims} = {declared} bytes; the limit is"
            f" {limits.max_initializer_bytes} bytes and {limits.max_tensor_elements} elements"
        )


def _spec(value: onnx.ValueInfoProto, limits: Limits, kind: str) -> TensorSpec:
    vtype = value.type
    if not vtype.HasField("tensor_type"):
        raise UnsupportedType(
            f"{kind} '{value.name}' is a {vtype.WhichOneof('value')}; only tensors are served"
        )
    elem = vtype.tensor_type.elem_type
    if elem not in OIP_DATATYPES:
        name = TensorProto.DataType.Name(elem) if elem else "undefined"
        raise UnsupportedType(f"{kind} '{value.name}' has element type {name}, not supported")
    shape: list[int] = []
    names: list[str | None] = []
    if vtype.tensor_type.HasField("shape"):
        for dim in vtype.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                if dim.dim_value > limits.max_dim:
                    raise AbsurdShape(
                        f"{kind} '{value.name}' declares a dimension of {dim.dim_value}; the"
                        f" limit is {limits.max_dim}"
                    )
                shape.append(int(dim.dim_value))
                names.append(None)
            else:
                shape.append(-1)
                names.append(dim.dim_param or None)
        fixed = [d for d in shape if d > 0]
        if _elements(fixed) > limits.max_tensor_elements:
            raise AbsurdShape(
                f"{kind} '{value.name}' declares {shape}, more than"
                f" {limits.max_tensor_elements} elements"
            )
    return TensorSpec(value.name, OIP_DATATYPES[elem], shape, names)
