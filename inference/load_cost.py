"""What onnxruntime materialises when it loads a model, sized before it ever does:
every tensor at its dense size (sparse ones densified, constants and attributes
included) and every node once local functions are inlined, through subgraphs and local
functions. A 215-byte model can otherwise take 11 s and over 4 GB to load."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import onnx
from onnx import TensorProto

from inference.errors import (
    AbsurdShape,
    ExternalData,
    InitializerTooLarge,
    InvalidGraph,
    LoadSizeTooLarge,
)
from inference.limits import Limits

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


def check_totals(cost: LoadCost, limits: Limits) -> None:
    """Refuse a model whose load, summed, is over the limits."""
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


def element_count(dims: Iterable[int]) -> int:
    """Elements of a tensor of these dims (a symbolic or zero dim counts as one)."""
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
    elements = element_count(dims)
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
    elements = element_count(dims)
    dense = elements * _itemsize(sparse.values.data_type)
    if elements > limits.max_tensor_elements or dense > limits.max_initializer_bytes:
        raise LoadSizeTooLarge(
            f"{where} '{name}' is stored sparse in {stored} bytes but densifies to {dims} ="
            f" {dense} bytes at load; the limit is {limits.max_initializer_bytes} bytes and"
            f" {limits.max_tensor_elements} elements"
        )
    return dense
