"""CAR v1 (content-addressed archive) files: write a DAG's blocks, read them back with
every block checked against its CID.

The format is a dag-cbor header `{roots: [CID], version: 1}` then, per block,
`varint(len(cid) + len(data)) || cid || data`. libipld decodes the header; the framing
is small enough to stream here, so a CAR of any size is read in constant memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import libipld

from storage.errors import InvalidCar
from storage.unixfs import DAG_PB, RAW, SHA2_256, Block, varint

MAX_BLOCK = 4 << 20  # far above the 256 KiB leaves and ~8 KiB nodes a file DAG has


def header(root: bytes) -> bytes:
    """The dag-cbor header for one root, byte for byte as go-car and js-car write it."""
    link = b"\x00" + root  # CBOR tag 42 holds the CID behind a 0x00 multibase byte
    body = b"\xa2\x65roots\x81\xd8\x2a" + _cbor_bytes_head(len(link)) + link + b"\x67version\x01"
    return varint(len(body)) + body


def _cbor_bytes_head(n: int) -> bytes:
    if n < 24:
        return bytes([0x40 | n])
    if n < 256:
        return bytes([0x58, n])
    return bytes([0x59]) + n.to_bytes(2, "big")


def write(out: BinaryIO, root: bytes, blocks: Iterable[Block]) -> int:
    """Write a CAR with `root` and `blocks`; returns the bytes written."""
    written = out.write(header(root))
    for block in blocks:
        written += out.write(varint(len(block.cid) + len(block.data)))
        written += out.write(block.cid)
        written += out.write(block.data)
    return written


def _read_varint(stream: BinaryIO) -> int | None:
    shift = value = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift:
                raise InvalidCar("the CAR ends inside a length prefix")
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise InvalidCar("a CAR length prefix is too long")


def _split_cid(section: bytes) -> tuple[bytes, bytes]:
    """(cid, data) from a block section: parse the CID's own varints to find its end."""
    pos = 0

    def take_varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= len(section):
                raise InvalidCar("a CAR block's CID is truncated")
            byte = section[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    if section[:2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash
        return section[:34], section[34:]
    if take_varint() != 1:
        raise InvalidCar("a CAR block has a CID of an unknown version")
    take_varint()  # codec
    take_varint()  # multihash code
    length = take_varint()
    end = pos + length
    if end > len(section):
        raise InvalidCar("a CAR block's CID is truncated")
    return section[:end], section[end:]


def multihash_of(cid: bytes) -> tuple[int, bytes]:
    """(hash function code, digest) of a binary CID."""
    if cid[:2] == b"\x12\x20":
        return SHA2_256, cid[2:]
    parts = libipld.decode_cid(cid)
    return int(parts["hash"]["code"]), bytes(parts["hash"]["digest"])


def read(stream: BinaryIO) -> tuple[list[bytes], Iterator[Block]]:
    """The CAR's roots and an iterator over its blocks, each verified against its CID
    before it is yielded (InvalidCar on the first that does not match)."""
    length = _read_varint(stream)
    if length is None or length > 1 << 20:
        raise InvalidCar("the CAR header is missing or too large")
    try:
        head = libipld.decode_dag_cbor(stream.read(length))
    except ValueError:
        raise InvalidCar("the CAR header is not valid dag-cbor") from None
    if not isinstance(head, dict) or head.get("version") != 1 or not head.get("roots"):
        raise InvalidCar("only CAR v1 files with at least one root are supported")
    roots = [bytes(r) for r in head["roots"]]

    def blocks() -> Iterator[Block]:
        while (size := _read_varint(stream)) is not None:
            if size > MAX_BLOCK:
                raise InvalidCar(f"a CAR block of {size} bytes is over the {MAX_BLOCK} limit")
            section = stream.read(size)
            if len(section) != size:
                raise InvalidCar("the CAR ends inside a block")
            cid, data = _split_cid(section)
            code, digest = multihash_of(cid)
            if code != SHA2_256:
                raise InvalidCar(
                    f"a CAR block uses hash function {code:#x}; only sha2-256 is supported"
                )
            if hashlib.sha256(data).digest() != digest:
                raise InvalidCar(
                    f"CAR block {libipld.encode_cid(cid)} does not match its CID: altered"
                )
            yield Block(cid, data)

    return roots, blocks()


def codec_of(cid: bytes) -> int:
    """The codec of a binary CID (CIDv0 is always dag-pb)."""
    if cid[:2] == b"\x12\x20":
        return DAG_PB
    return int(libipld.decode_cid(cid)["codec"])


def file_chunks(root: bytes, get_block: Callable[[bytes], bytes]) -> Iterator[bytes]:
    """The file bytes under a UnixFS `root`, in order, pulling blocks from `get_block`."""
    stack = [root]
    while stack:
        cid = stack.pop()
        data = get_block(cid)
        if codec_of(cid) == RAW:
            yield data
            continue
        links, unixfs = _decode_pbnode(data)
        inline = _unixfs_data(unixfs) if unixfs else b""
        if inline:
            yield inline
        stack.extend(reversed(links))


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    pos = 0
    while pos < len(buf):
        key, pos = _varint_at(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint_at(buf, pos)
            yield field, wire, value
        elif wire == 2:
            size, pos = _varint_at(buf, pos)
            if pos + size > len(buf):
                raise InvalidCar("a dag-pb node is truncated")
            yield field, wire, buf[pos : pos + size]
            pos += size
        else:
            raise InvalidCar(f"a dag-pb node has an unsupported wire type {wire}")


def _varint_at(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(buf):
            raise InvalidCar("a dag-pb node is truncated")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _decode_pbnode(data: bytes) -> tuple[list[bytes], bytes]:
    links: list[bytes] = []
    unixfs = b""
    for field, wire, value in _fields(data):
        if field == 2 and wire == 2:
            assert isinstance(value, bytes)
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    assert isinstance(v, bytes)
                    links.append(v)
        elif field == 1 and wire == 2:
            assert isinstance(value, bytes)
            unixfs = value
    return links, unixfs


def _unixfs_data(unixfs: bytes) -> bytes:
    kind = None
    inline = b""
    for field, _wire, value in _fields(unixfs):
        if field == 1:
            kind = value
        elif field == 2 and isinstance(value, bytes):
            inline = value
    if kind not in (0, 2):  # Raw or File; directories are not model files
        raise InvalidCar("the CAR's root is not a file")
    return inline
