"""Kubo's UnixFS file layout as blocks: `ipfs add --cid-version=1` (raw leaves, 256 KiB
fixed chunks, balanced DAG of at most 174 links per node).

aleph-cid computes the same root CID faster, but gives no blocks; the blocks are what a
CAR file carries and what a node serves, so the layout lives here, streaming, in memory
bounded by one chunk plus one link list per DAG level.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHUNK_SIZE = 256 * 1024
MAX_LINKS = 174

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12


def varint(n: int) -> bytes:
    """Unsigned LEB128, as protobuf and multiformats write integers."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def cid_v1(codec: int, data: bytes) -> bytes:
    """The binary CIDv1 (sha2-256) of a block."""
    return b"\x01" + varint(codec) + bytes([SHA2_256, 32]) + hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Block:
    """One IPLD block: its binary CID and its bytes."""

    cid: bytes
    data: bytes


@dataclass(frozen=True)
class _Child:
    cid: bytes
    file_size: int  # bytes of the file under this child
    tsize: int  # bytes of every block under this child, itself included


def _field_bytes(field: int, value: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(value)) + value


def _field_varint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def _file_node(children: list[_Child]) -> bytes:
    """dag-pb PBNode for an internal UnixFS file node (links first, then Data)."""
    unixfs = _field_varint(1, 2)  # Type = File
    unixfs += _field_varint(3, sum(c.file_size for c in children))
    for c in children:
        unixfs += _field_varint(4, c.file_size)  # blocksizes
    links = b"".join(
        _field_bytes(2, _field_bytes(1, c.cid) + _field_bytes(2, b"") + _field_varint(3, c.tsize))
        for c in children
    )
    return links + _field_bytes(1, unixfs)


class _Chunks:
    """Fixed-size chunks of a stream, with one chunk of lookahead so `done` is known."""

    def __init__(self, stream: BinaryIO, on_bytes: Callable[[int], None] | None) -> None:
        self._stream = stream
        self._on_bytes = on_bytes
        self._next = self._read()

    def _read(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while size < CHUNK_SIZE:
            part = self._stream.read(CHUNK_SIZE - size)
            if not part:
                break
            parts.append(part)
            size += len(part)
        data = b"".join(parts)
        if data and self._on_bytes:
            self._on_bytes(len(data))
        return data

    @property
    def done(self) -> bool:
        return not self._next

    def take(self) -> bytes:
        data, self._next = self._next, self._read()
        return data


def file_blocks(stream: BinaryIO, on_bytes: Callable[[int], None] | None = None) -> Iterator[Block]:
    """Every block of the file's DAG, children before parents; the last is the root."""
    chunks = _Chunks(stream, on_bytes)

    def leaf() -> Iterator[Block | _Child]:
        data = chunks.take()
        cid = cid_v1(RAW, data)
        yield Block(cid, data)
        yield _Child(cid, len(data), len(data))

    def node(children: list[_Child]) -> Iterator[Block | _Child]:
        data = _file_node(children)
        cid = cid_v1(DAG_PB, data)
        yield Block(cid, data)
        yield _Child(
            cid, sum(c.file_size for c in children), len(data) + sum(c.tsize for c in children)
        )

    def fill(first: _Child | None, depth: int) -> Iterator[Block | _Child]:
        # go-unixfs balanced.fillNodeRec: fill a node of `depth` to MAX_LINKS children.
        children = [first] if first else []
        while len(children) < MAX_LINKS and not chunks.done:
            for item in leaf() if depth == 1 else fill(None, depth - 1):
                if isinstance(item, Block):
                    yield item
                else:
                    children.append(item)
        yield from node(children)

    # go-unixfs balanced.Layout: one leaf, then grow a level each time the tree is full.
    root: _Child | None = None
    for item in leaf():
        if isinstance(item, Block):
            yield item
        else:
            root = item
    depth = 1
    while not chunks.done:
        for item in fill(root, depth):
            if isinstance(item, Block):
                yield item
            else:
                root = item
        depth += 1
