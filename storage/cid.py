"""Kubo-identical CIDs (`ipfs add --cid-version=1`: raw leaves, 256 KiB chunks, balanced
DAG, 174 links) computed streaming, and verification of a byte stream against a CID.

The hashing is aleph-cid's (Rust, releases the GIL, golden-tested against Kubo);
`storage.unixfs` builds the same DAG as blocks where blocks are needed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import aleph_cid
import libipld

from storage.errors import ContentMismatch, ContentTooLarge, InvalidCid
from storage.unixfs import CHUNK_SIZE

READ_SIZE = 1 << 20
SHA2_256 = 0x12  # the multihash code

ProgressFn = Callable[[int], None]


def compute(stream: BinaryIO, on_bytes: ProgressFn | None = None) -> str:
    """The CIDv1 (base32) Kubo would give `stream`'s bytes, in constant memory."""
    hasher = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()
    while chunk := stream.read(READ_SIZE):
        hasher.update(chunk)
        if on_bytes:
            on_bytes(len(chunk))
    return hasher.finalize()


def compute_bytes(data: bytes) -> str:
    """The CIDv1 (base32) of `data`."""
    hasher = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()
    hasher.update(data)
    return hasher.finalize()


def decode(cid: str) -> bytes:
    """The binary form of a CID in any multibase (v0 or v1); InvalidCid if it is none."""
    try:
        parts = libipld.decode_cid(cid)
    except Exception:
        raise InvalidCid(f"{cid[:80]!r} is not a CID") from None
    digest = bytes(parts["hash"]["digest"])
    multihash = _varint(int(parts["hash"]["code"])) + _varint(len(digest)) + digest
    if parts["version"] == 0:
        return multihash
    return b"\x01" + _varint(int(parts["codec"])) + multihash


@functools.lru_cache(maxsize=4096)  # pure, and on every paid call
def normalize(cid: str) -> str:
    """`cid` as CIDv1 base32 text (the form this project stores and compares)."""
    raw = decode(cid)
    if raw[0] != 1:  # CIDv0 is dag-pb sha2-256
        raw = b"\x01\x70" + raw
    return str(libipld.encode_cid(raw))


@functools.lru_cache(maxsize=4096)  # pure, and on every paid call with receipts on
def digest(cid: str) -> bytes:
    """The 32-byte sha2-256 digest a CID's multihash carries (of the root block: for a
    chunked file that is its DAG root, not the file's own sha256)."""
    try:
        parts = libipld.decode_cid(cid)
    except Exception:
        raise InvalidCid(f"{cid[:80]!r} is not a CID") from None
    if int(parts["hash"]["code"]) != SHA2_256 or len(parts["hash"]["digest"]) != 32:
        raise InvalidCid(f"{cid[:80]!r} is not a sha2-256 CID")
    return bytes(parts["hash"]["digest"])


def same(a: str, b: str) -> bool:
    """Whether two CID texts name the same content (bases may differ)."""
    return normalize(a) == normalize(b)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


class Verifier:
    """Feed bytes in order; `finish()` raises ContentMismatch unless they hash to `cid`.

    With `leaf_digests` (the sha2-256 of each 256 KiB leaf, from the DAG), a bad chunk
    is caught as soon as it is complete instead of at the end.
    """

    def __init__(
        self, cid: str, *, max_bytes: int | None = None, leaf_digests: Iterable[bytes] = ()
    ) -> None:
        self.cid = normalize(cid)
        self.max_bytes = max_bytes
        self.size = 0
        self._hasher = aleph_cid.CidHasher.for_expected(self.cid)
        self._leaves: Iterator[bytes] | None = iter(leaf_digests) if leaf_digests else None
        self._pending = bytearray()

    def update(self, data: bytes) -> None:
        """Absorb the next bytes."""
        self.size += len(data)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise ContentTooLarge(f"{self.cid} is larger than the {self.max_bytes}-byte limit")
        self._hasher.update(data)
        if self._leaves is not None:
            self._pending += data
            while len(self._pending) >= CHUNK_SIZE:
                self._check_leaf(bytes(self._pending[:CHUNK_SIZE]))
                del self._pending[:CHUNK_SIZE]

    def _check_leaf(self, chunk: bytes) -> None:
        assert self._leaves is not None
        expected = next(self._leaves, None)
        if expected != hashlib.sha256(chunk).digest():
            offset = self.size - len(self._pending)
            raise ContentMismatch(
                f"bytes near offset {offset} do not match {self.cid}: the content was altered"
            )

    def finish(self) -> None:
        """Raise ContentMismatch unless every byte fed hashes to the CID."""
        if self._leaves is not None and self._pending:
            self._check_leaf(bytes(self._pending))
            self._pending.clear()
        got = self._hasher.finalize()
        if got != self.cid:
            raise ContentMismatch(
                f"the {self.size} bytes served as {self.cid} hash to {got}: content refused"
            )


def verify(
    stream: BinaryIO | Iterable[bytes],
    cid: str,
    *,
    sink: Callable[[bytes], object] | None = None,
    max_bytes: int | None = None,
    leaf_digests: Iterable[bytes] = (),
    on_bytes: ProgressFn | None = None,
) -> int:
    """Check that `stream` hashes to `cid`, passing each piece to `sink` on the way;
    return the size. Raises ContentMismatch (or ContentTooLarge); a caller that wrote to
    a sink must discard what it wrote."""
    verifier = Verifier(cid, max_bytes=max_bytes, leaf_digests=leaf_digests)
    pieces: Iterable[bytes] = (
        iter(lambda: stream.read(READ_SIZE), b"") if hasattr(stream, "read") else stream
    )
    for piece in pieces:
        verifier.update(piece)
        if sink:
            sink(piece)
        if on_bytes:
            on_bytes(len(piece))
    verifier.finish()
    return verifier.size
