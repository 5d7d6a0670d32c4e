"""Which content store to open: an IPFS node over the Kubo RPC API when one is
configured, else the embedded local store."""

from __future__ import annotations

from pathlib import Path

from storage.ipfs import IpfsStore
from storage.local import LocalStore
from storage.store import ContentStore


def open_store(
    local_dir: Path, ipfs_api: str | None = None, *, timeout: float = 30.0
) -> ContentStore:
    """An IPFS node at `ipfs_api` (a multiaddr), else the embedded store in `local_dir`."""
    if ipfs_api:
        return IpfsStore(ipfs_api, timeout=timeout)
    return LocalStore(local_dir)
