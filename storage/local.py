"""The embedded content store: each file on disk under its CID, written atomically
(temp file + rename), with pins, garbage collection and CAR v1 import/export."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from storage import car, cid, unixfs
from storage.cid import ProgressFn
from storage.errors import ContentNotFound, InvalidCar, StoreUnavailable

READ_SIZE = 1 << 20


class LocalStore:
    """Files in `<root>/blobs/<cid>`, pins as marker files in `<root>/pins/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._pins = root / "pins"
        self._tmp = root / "tmp"
        for folder in (self._blobs, self._pins, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def ping(self) -> None:
        """The embedded store answers while its folder is there."""
        if not self._blobs.is_dir():
            raise StoreUnavailable(f"the embedded store's folder {self._blobs} is gone")

    def _blob(self, content: str) -> Path:
        return self._blobs / cid.normalize(content)

    def add(self, stream: BinaryIO, *, pin: bool = True, on_bytes: ProgressFn | None = None) -> str:
        """Store the stream (hashing while writing); return its CID."""
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:

                class _Tee:
                    def read(self, n: int = -1) -> bytes:
                        data = stream.read(n)
                        out.write(data)
                        return data

                content = cid.compute(_Tee(), on_bytes)  # type: ignore[arg-type]
                out.flush()
                os.fsync(out.fileno())
            target = self._blobs / content
            if target.exists():
                tmp.unlink()
            else:
                tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if pin:
            self.pin(content)
        return content

    def cat(
        self, cid_text: str, *, timeout: float | None = None, on_bytes: ProgressFn | None = None
    ) -> Iterator[bytes]:
        """The stored bytes of `cid_text`, in 1 MiB pieces."""
        path = self._blob(cid_text)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise ContentNotFound(f"{cid_text} is not in the local store") from None

        def pieces() -> Iterator[bytes]:
            with handle:
                while data := handle.read(READ_SIZE):
                    if on_bytes:
                        on_bytes(len(data))
                    yield data

        return pieces()

    def has(self, cid_text: str) -> bool:
        """Whether the file is stored."""
        return self._blob(cid_text).exists()

    def pin(self, cid_text: str) -> None:
        """Keep the file through `gc`."""
        if not self.has(cid_text):
            raise ContentNotFound(f"cannot pin {cid_text}: it is not in the local store")
        (self._pins / cid.normalize(cid_text)).touch()

    def unpin(self, cid_text: str) -> None:
        """Let `gc` remove the file."""
        (self._pins / cid.normalize(cid_text)).unlink(missing_ok=True)

    def pins(self) -> set[str]:
        """The pinned CIDs."""
        return {p.name for p in self._pins.iterdir()}

    def gc(self) -> list[str]:
        """Remove every unpinned file and stale temp file; return the CIDs removed."""
        pinned = self.pins()
        removed = []
        for blob in self._blobs.iterdir():
            if blob.name not in pinned:
                blob.unlink(missing_ok=True)
                removed.append(blob.name)
        for tmp in self._tmp.iterdir():
            tmp.unlink(missing_ok=True)
        return sorted(removed)

    def export_car(self, cid_text: str, out: BinaryIO) -> int:
        """Write the file's Kubo-layout DAG as a CAR v1 file."""
        path = self._blob(cid_text)
        if not path.exists():
            raise ContentNotFound(f"{cid_text} is not in the local store")
        root_text = cid.normalize(cid_text)
        with path.open("rb") as src:
            # The header needs the root first: hash once (fast), then stream the blocks.
            if cid.compute(src) != root_text:
                raise InvalidCar(f"the stored bytes of {cid_text} no longer match it")
            src.seek(0)
            return car.write(out, cid.decode(root_text), unixfs.file_blocks(src))

    def import_car(self, stream: BinaryIO) -> str:
        """Store the file in a CAR (each block checked); return its root CID."""
        roots, blocks = car.read(stream)
        if len(roots) != 1:
            raise InvalidCar(f"the CAR has {len(roots)} roots; a file has one")
        work = Path(tempfile.mkdtemp(dir=self._tmp))
        try:
            for block in blocks:
                (work / block.cid.hex()).write_bytes(block.data)

            def get(block_cid: bytes) -> bytes:
                try:
                    return (work / block_cid.hex()).read_bytes()
                except FileNotFoundError:
                    raise InvalidCar(f"the CAR lacks block {_text(block_cid)}") from None

            expected = _text(roots[0])
            content = self.add(_ChunkReader(car.file_chunks(roots[0], get)))  # type: ignore[arg-type]
            if not cid.same(content, expected):
                self.unpin(content)
                raise InvalidCar(
                    f"the CAR's file hashes to {content} under the Kubo layout, not to its"
                    f" root {expected}; only `ipfs add --cid-version=1` files are supported"
                )
            return content
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _text(binary_cid: bytes) -> str:
    import libipld

    return str(libipld.encode_cid(binary_cid))


class _ChunkReader:
    """A read()-able view of an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buf += nxt
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data
