"""Validate an ONNX file before it is ever listed or run, and extract its signature for
the model card: inputs/outputs (names, element types, shapes with symbolic dims), opsets,
producer, size and sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from inference.errors import (
    AbsurdShape,
    ExternalData,
    InitializerTooLarge,
    InvalidGraph,
    LoadSizeTooLarge,
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
    max_initializer_bytes: int = 1 << 30  # any one stored tensor, at its dense size
    # everything materialised at load, summed: as much as the largest file may hold
    max_load_bytes: int = 1 << 30
    max_load_nodes: int = 1 << 20  # once local functions are inlined
    # the signature is stored and served to anyone: bounded, printable
    max_signature_tensors: int = 256  # inputs + outputs
    max_name_chars: int = 256
    max_rank: int = 32


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        """The inverse of `asdict` (as stored with a listing)."""
        return cls(
            str(data["name"]),
            str(data["datatype"]),
            [int(d) for d in data["shape"]],
            list(data.get("dim_names", [])),
        )


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """The inverse of `to_dict` (the signature the indexer stored); missing fields
        read as empty."""
        return cls(
            sha256=str(data.get("sha256", "")),
            size=int(data.get("size", 0)),
            ir_version=int(data.get("ir_version", 0)),
            opsets={str(k): int(v) for k, v in data.get("opsets", {}).items()},
            producer=str(data.get("producer", "")),
            inputs=[TensorSpec.from_dict(t) for t in data.get("inputs", [])],
            outputs=[TensorSpec.from_dict(t) for t in data.get("outputs", [])],
        )


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
    # before the checker: sizing is linear in the file, whatever it would expand to
    _check_totals(load_cost(model, limits), limits)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise InvalidGraph(f"the ONNX graph is invalid: {first}") from None

    initializer_names = {t.name for t in model.graph.initializer}
    declared = len(model.graph.input) + len(model.graph.output)
    if declared > limits.max_signature_tensors:
        raise InvalidGraph(
            f"the model declares {declared} inputs and outputs; the limit is"
            f" {limits.max_signature_tensors}"
        )
    inputs = [
        _spec(v, limits, "input") for v in model.graph.input if v.name not in initializer_names
    ]
    outputs = [_spec(v, limits, "output") for v in model.graph.output]
    return ModelInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        ir_version=model.ir_version,
        opsets=opsets,
        producer=_shown(f"{model.producer_name} {model.producer_version}".strip(), 200),
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


_MAX_NESTING = 64  # subgraphs and local function calls, one inside another


@dataclass
class LoadCost:
    """What onnxruntime materialises when it loads a model: tensor bytes at their dense
    size, and nodes once local functions are inlined."""

    tensor_bytes: int = 0
    nodes: int = 0

    def add(self, other: LoadCost) -> None:
        self.tensor_bytes += other.tensor_bytes
        self.nodes += other.nodes


def load_cost(model: onnx.ModelProto, limits: Limits | None = None) -> LoadCost:
    """Size (and check) every tensor the model materialises at load, raising an
    InvalidModel subclass for the first one refused; the totals are not checked here."""
    walk = _LoadWalk(model, limits or Limits())
    cost = walk.graph(model.graph, "", 0)
    for training in model.training_info:
        cost.add(walk.graph(training.initialization, "training initialization: ", 1))
        cost.add(walk.graph(training.algorithm, "training algorithm: ", 1))
    for function in model.functions:  # uncalled ones too: they must not read outside
        walk.function(function, 1)
    return cost


def _function_key(domain: str, name: str, overload: str) -> tuple[str, str, str]:
    return (domain or "", name, overload)


class _LoadWalk:
    """Walks graphs, subgraphs (If/Loop/Scan bodies, any `g`/`graphs` attribute) and local
    functions; a function counts once per call site, because onnxruntime inlines each
    call (a 263 KB file of functions calling each other twice took 23 s and 1.2 GB)."""

    def __init__(self, model: onnx.ModelProto, limits: Limits) -> None:
        self.limits = limits
        self.functions = {_function_key(f.domain, f.name, f.overload): f for f in model.functions}
        self.done: dict[tuple[str, str, str], LoadCost] = {}
        self.active: set[tuple[str, str, str]] = set()

    def graph(self, graph: onnx.GraphProto, where: str, depth: int) -> LoadCost:
        _check_depth(depth)
        cost = LoadCost()
        for tensor in graph.initializer:
            cost.tensor_bytes += _dense_bytes(f"{where}initializer", tensor, self.limits)
        for sparse in graph.sparse_initializer:
            cost.tensor_bytes += _sparse_bytes(f"{where}sparse initializer", sparse, self.limits)
        cost.add(self.nodes(graph.node, where, depth))
        return cost

    def nodes(self, nodes: Iterable[onnx.NodeProto], where: str, depth: int) -> LoadCost:
        cost = LoadCost()
        for node in nodes:
            cost.nodes += 1
            label = f"{where}node '{node.name or node.op_type}'"
            for attr in node.attribute:
                cost.add(self.attribute(attr, label, depth))
            callee = self.functions.get(_function_key(node.domain, node.op_type, node.overload))
            if callee is not None:
                cost.add(self.function(callee, depth + 1))
        return cost

    def attribute(self, attr: onnx.AttributeProto, where: str, depth: int) -> LoadCost:
        label = f"attribute '{attr.name}' of {where}"
        # value_floats / value_ints / value_strings of Constant, and any other list
        cost = LoadCost(
            4 * len(attr.floats) + 8 * len(attr.ints) + sum(len(s) for s in attr.strings)
        )
        for tensor in [*([attr.t] if attr.HasField("t") else []), *attr.tensors]:
            cost.tensor_bytes += _dense_bytes(label, tensor, self.limits)
        sparse = [*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else [])]
        for one in [*sparse, *attr.sparse_tensors]:
            cost.tensor_bytes += _sparse_bytes(label, one, self.limits)
        for graph in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
            cost.add(self.graph(graph, f"subgraph '{graph.name}' of {where}: ", depth + 1))
        return cost

    def function(self, function: onnx.FunctionProto, depth: int) -> LoadCost:
        _check_depth(depth)
        key = _function_key(function.domain, function.name, function.overload)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise InvalidGraph(f"local function '{function.name}' calls itself")
        self.active.add(key)
        where = f"local function '{function.domain}:{function.name}' "
        cost = self.nodes(function.node, where, depth)
        for attr in function.attribute_proto:  # default attribute values
            cost.add(self.attribute(attr, where, depth))
        self.active.discard(key)
        self.done[key] = cost
        return cost


def _check_depth(depth: int) -> None:
    if depth > _MAX_NESTING:
        raise InvalidGraph(
            f"subgraphs and local functions nest more than {_MAX_NESTING} levels deep"
        )


def _check_totals(cost: LoadCost, limits: Limits) -> None:
    if cost.tensor_bytes > limits.max_load_bytes:
        raise LoadSizeTooLarge(
            f"the model materialises {cost.tensor_bytes} bytes of tensors at load (sparse"
            f" ones densified, local functions once per call); the limit is"
            f" {limits.max_load_bytes}"
        )
    if cost.nodes > limits.max_load_nodes:
        raise LoadSizeTooLarge(
            f"the model has {cost.nodes} nodes once its local functions are inlined; the"
            f" limit is {limits.max_load_nodes}"
        )


def _elements(dims: Iterable[int]) -> int:
    total = 1
    for d in dims:
        total *= max(d, 1)
    return total


@cache
def _itemsize(data_type: int) -> int:
    """Bytes per element once loaded (a std::string per STRING element)."""
    if data_type == TensorProto.STRING:
        return 32
    try:
        return max(1, onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize)
    except (KeyError, ValueError, TypeError):
        return 8  # unknown or undefined: size it like the widest common type


def _dense_bytes(where: str, tensor: TensorProto, limits: Limits) -> int:
    """Check one stored tensor (self-contained, sane declared shape) and return its size."""
    if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
        raise ExternalData(
            f"{where} '{tensor.name}' keeps its data in an external file; a listed model"
            " must be self-contained"
        )
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise AbsurdShape(f"{where} '{tensor.name}' has a negative dimension {dims}")
    elements = _elements(dims)
    declared = elements * _itemsize(tensor.data_type)
    if elements > limits.max_tensor_elements or declared > limits.max_initializer_bytes:
        raise InitializerTooLarge(
            f"{where} '{tensor.name}' declares {dims} = {declared} bytes; the limit is"
            f" {limits.max_initializer_bytes} bytes and {limits.max_tensor_elements} elements"
        )
    return declared


def _sparse_bytes(where: str, sparse: onnx.SparseTensorProto, limits: Limits) -> int:
    """Check a sparse tensor and return its dense size: onnxruntime densifies it at load
    (`dims` is the dense shape), so 111 bytes can become 2 GB."""
    stored = _dense_bytes(f"{where} values", sparse.values, limits)
    stored += _dense_bytes(f"{where} indices", sparse.indices, limits)
    dims = list(sparse.dims)
    name = sparse.values.name
    if any(d < 0 for d in dims):
        raise AbsurdShape(f"{where} '{name}' has a negative dimension {dims}")
    elements = _elements(dims)
    dense = elements * _itemsize(sparse.values.data_type)
    if elements > limits.max_tensor_elements or dense > limits.max_initializer_bytes:
        raise LoadSizeTooLarge(
            f"{where} '{name}' is stored sparse in {stored} bytes but densifies to {dims} ="
            f" {dense} bytes at load; the limit is {limits.max_initializer_bytes} bytes and"
            f" {limits.max_tensor_elements} elements"
        )
    return dense


def _shown(text: str, limit: int) -> str:
    """Free text from the file, kept printable and short (it is served to anyone)."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _spec(value: onnx.ValueInfoProto, limits: Limits, kind: str) -> TensorSpec:
    if not value.name or len(value.name) > limits.max_name_chars or not value.name.isprintable():
        raise InvalidGraph(
            f"{kind} '{_shown(value.name, 40)}' needs a printable name of 1 to"
            f" {limits.max_name_chars} characters"
        )
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
        if len(vtype.tensor_type.shape.dim) > limits.max_rank:
            raise AbsurdShape(
                f"{kind} '{value.name}' has rank {len(vtype.tensor_type.shape.dim)}; the limit"
                f" is {limits.max_rank}"
            )
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
                names.append(_shown(dim.dim_param, limits.max_name_chars) or None)
        fixed = [d for d in shape if d > 0]
        if _elements(fixed) > limits.max_tensor_elements:
            raise AbsurdShape(
                f"{kind} '{value.name}' declares {shape}, more than"
                f" {limits.max_tensor_elements} elements"
            )
    return TensorSpec(value.name, OIP_DATATYPES[elem], shape, names)
