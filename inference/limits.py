"""What a listed model may declare and materialise: the bounds inspection holds every
ONNX file to, before it is listed or run."""

from __future__ import annotations

from dataclasses import dataclass

import onnx


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
