"""The canonical digest of a set of tensors: what a usage receipt commits to for a
call's inputs (as fed to onnxruntime) and outputs (as it returned them), so anyone can
recompute it from the request they sent, or from a re-run.

sha256 over, per tensor in name order: the name, the numpy dtype (little-endian), the
shape, then the elements in C order, little-endian (BYTES tensors: each element's
length, then its bytes). Every part is length-prefixed, so no two tensor sets encode
alike.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

_LENGTH = struct.Struct("<Q")


def tensors_digest(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The 32-byte sha256 of `tensors` in the canonical form above (on every paid call:
    each tensor's fixed part, from its name, dtype and shape, is made once and kept)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name]
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        dtype = array.dtype
        if dtype.kind in "OSU":
            items = [x if isinstance(x, bytes) else str(x).encode() for x in array.ravel()]
            data = b"".join([_LENGTH.pack(len(x)) + x for x in items])
            digest.update(_head(name, b"BYTES", array.shape))
        else:
            if dtype.byteorder == ">" or not array.flags.c_contiguous:
                array = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
            data = array.tobytes()
            digest.update(_head(name, _kind(dtype), array.shape))
        digest.update(_LENGTH.pack(len(data)))
        digest.update(data)
    return digest.digest()


@functools.lru_cache(maxsize=1024)
def _head(name: str, kind: bytes, shape: tuple[int, ...]) -> bytes:
    """A tensor's parts before its data: name, kind and shape, each length-prefixed."""
    key = name.encode()
    dims = _LENGTH.pack(len(shape)) + b"".join([_LENGTH.pack(d) for d in shape])
    return b"".join(
        [_LENGTH.pack(len(key)), key, _LENGTH.pack(len(kind)), kind, _LENGTH.pack(len(dims)), dims]
    )


@functools.lru_cache(maxsize=64)
def _kind(dtype: np.dtype[Any]) -> bytes:
    return dtype.newbyteorder("<").str.encode()
