"""The one content-store interface both backends implement (the embedded `LocalStore`
and an IPFS node's `IpfsStore`); `storage.backends` opens one from settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol

from storage.cid import ProgressFn


class ContentStore(Protocol):
    """Content addressed by Kubo-identical CIDv1. `cat` streams bytes as the backend has
    them; callers that must trust them verify against the CID (see `storage.cache`)."""

    def add(self, stream: BinaryIO, *, pin: bool = True, on_bytes: ProgressFn | None = None) -> str:
        """Store the stream's bytes; return their CID (base32)."""
        ...

    def cat(
        self, cid: str, *, timeout: float | None = None, on_bytes: ProgressFn | None = None
    ) -> Iterator[bytes]:
        """The bytes of `cid`, streamed; ContentNotFound when the store has none."""
        ...

    def has(self, cid: str) -> bool:
        """Whether the store holds `cid` locally."""
        ...

    def pin(self, cid: str) -> None:
        """Keep `cid` through garbage collection."""
        ...

    def unpin(self, cid: str) -> None:
        """Let garbage collection remove `cid`."""
        ...

    def export_car(self, cid: str, out: BinaryIO) -> int:
        """Write `cid`'s DAG as a CAR v1 file; return its size."""
        ...

    def import_car(self, stream: BinaryIO) -> str:
        """Store the file a CAR v1 holds (every block verified); return its root CID."""
        ...

    def ping(self) -> None:
        """Return when the store answers; StoreUnavailable (or StoreTimeout) when not."""
        ...
