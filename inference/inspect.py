"""Validate an ONNX file before it is ever listed or run, and extract its signature for
the model card: inputs/outputs (names, element types, shapes with symbolic dims), opsets,
producer, size and sha256."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from inference.errors import (
    AbsurdShape,
    InvalidGraph,
    ModelTooLarge,
    NotOnnx,
    UnsupportedOpset,
    UnsupportedType,
)
from inference.limits import Limits
from inference.load_cost import check_totals, element_count, load_cost

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
    check_totals(load_cost(model, limits), limits)
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
        if element_count(fixed) > limits.max_tensor_elements:
            raise AbsurdShape(
                f"{kind} '{value.name}' declares {shape}, more than"
                f" {limits.max_tensor_elements} elements"
            )
    return TensorSpec(value.name, OIP_DATATYPES[elem], shape, names)
