"""A real IPFS node over the Kubo RPC API (Kubo, IPFS Cluster's proxy, js-ipfs), through
ipfshttpclient. Every add asks for Kubo's CIDv1 layout and is checked against our own
CID; every request has a timeout, since a missing CID otherwise hangs forever."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any, BinaryIO

import ipfshttpclient
import ipfshttpclient.exceptions as ipfs_errors
import requests

from storage import cid
from storage.cid import ProgressFn
from storage.errors import (
    ContentMismatch,
    ContentNotFound,
    InvalidCar,
    StoreTimeout,
    StoreUnavailable,
)

# ipfshttpclient 0.7 (unmaintained) hands urllib3 a parameter it no longer needs, and
# urllib3 says so on stderr at every connection: noise for a CLI user, not our problem.
warnings.filterwarnings(
    "ignore", message="The 'strict' parameter is no longer needed", category=FutureWarning
)

ADD_OPTS = {"cid-base": "base32"}
RETRIES = 2  # of a read (cat, has, refs, pin) that could not reach the node
RETRY_BACKOFF = 0.25  # seconds before the first retry; doubling


class _Unreachable(Exception):
    """No connection to the node (retried when the request is a read)."""


class _Counting:
    """Wraps a stream: hashes what the client reads and reports progress."""

    def __init__(self, stream: BinaryIO, on_bytes: ProgressFn | None) -> None:
        import aleph_cid

        self._stream = stream
        self._on_bytes = on_bytes
        self.hasher = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        if data:
            self.hasher.update(data)
            if self._on_bytes:
                self._on_bytes(len(data))
        return data

    def fileno(self) -> int:
        raise OSError("not a real file")  # makes ipfshttpclient stream via read()


class IpfsStore:
    """Content on an IPFS node reached at `api` (a multiaddr like /ip4/127.0.0.1/tcp/5001/http)."""

    def __init__(self, api: str, *, timeout: float = 30.0) -> None:
        self.api = api
        self.timeout = timeout
        # connect() refuses daemons newer than the client knows; the constructor does not.
        # 1 MiB upload pieces: the 8 KiB default spends ~15% of an add in Python loops.
        self._client = ipfshttpclient.Client(api, timeout=timeout, chunk_size=1 << 20)

    def _timeout(self, what: str, limit: float | None) -> StoreTimeout:
        return StoreTimeout(
            f"the IPFS node at {self.api} did not answer {what} within {limit or self.timeout:g} s"
        )

    def _call(
        self,
        what: str,
        fn: Any,
        *args: Any,
        limit: float | None = None,
        retries: int = 0,
        **kwargs: Any,
    ) -> Any:
        for attempt in range(retries + 1):
            try:
                return self._call_once(what, fn, *args, limit=limit, **kwargs)
            except _Unreachable:
                if attempt == retries:
                    raise StoreUnavailable(f"cannot reach the IPFS node at {self.api}") from None
                # a node restarting is back within a second or two; more is an outage
                time.sleep(RETRY_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    def _call_once(
        self, what: str, fn: Any, *args: Any, limit: float | None = None, **kwargs: Any
    ) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ipfs_errors.TimeoutError, requests.exceptions.Timeout):
            raise self._timeout(what, limit) from None
        except (ipfs_errors.ConnectionError, requests.exceptions.ConnectionError):
            raise _Unreachable() from None
        except ipfs_errors.ErrorResponse as exc:
            text = str(exc)
            if any(word in text.lower() for word in ("timed out", "timeout", "deadline")):
                # the node's own `timeout=` option fired first: the same timeout as ours
                raise self._timeout(what, limit) from None
            if "not found" in text.lower() or "no link named" in text.lower():
                raise ContentNotFound(f"the IPFS node has no {what}: {text}") from None
            raise StoreUnavailable(f"the IPFS node refused {what}: {text}") from None
        except ipfs_errors.Error as exc:
            raise StoreUnavailable(f"the IPFS node failed {what}: {exc}") from None

    def add(self, stream: BinaryIO, *, pin: bool = True, on_bytes: ProgressFn | None = None) -> str:
        """Add with Kubo's CIDv1 layout; the node's CID must equal the one we compute."""
        counting = _Counting(stream, on_bytes)
        result = self._call(
            "add",
            self._client.add,
            counting,
            cid_version=1,
            raw_leaves=True,
            pin=pin,
            opts=dict(ADD_OPTS),
        )
        theirs = cid.normalize(result["Hash"])
        ours = counting.hasher.finalize()
        if theirs != ours:
            raise ContentMismatch(
                f"the IPFS node stored the content as {theirs}, but it hashes to {ours}"
            )
        return ours

    def cat(
        self, cid_text: str, *, timeout: float | None = None, on_bytes: ProgressFn | None = None
    ) -> Iterator[bytes]:
        """Stream the node's bytes for `cid_text` (unverified: see storage.cache)."""
        content = cid.normalize(cid_text)
        limit = timeout or self.timeout
        pieces = self._call(
            f"cat {content}",
            self._client.cat,
            content,
            stream=True,
            timeout=limit,
            opts={"timeout": f"{limit:g}s"},
            limit=limit,
            retries=RETRIES,
        )

        def stream() -> Iterator[bytes]:
            iterator = iter(pieces)
            while True:
                piece = self._call(f"cat {content}", next, iterator, None, limit=limit)
                if piece is None:
                    return
                if on_bytes:
                    on_bytes(len(piece))
                yield piece

        return stream()

    def ping(self) -> None:
        """One quick request (`version`): health's view of the node, never retried."""
        self._call("version", self._client.version, timeout=min(self.timeout, 2), limit=2)

    def has(self, cid_text: str) -> bool:
        """Whether the node has the root block locally (without fetching it)."""
        content = cid.normalize(cid_text)
        try:
            self._call(
                f"block {content}",
                self._client.block.stat,
                content,
                opts={"offline": "true", "timeout": "2s"},
                timeout=min(self.timeout, 5),
                retries=RETRIES,
            )
        except (ContentNotFound, StoreTimeout):
            return False
        return True

    def pin(self, cid_text: str) -> None:
        """Pin recursively on the node."""
        content = cid.normalize(cid_text)
        self._call(
            f"pin {content}",
            self._client.pin.add,
            content,
            opts={"timeout": f"{self.timeout:g}s"},
            retries=RETRIES,
        )

    def unpin(self, cid_text: str) -> None:
        """Remove the node's pin (a missing pin is not an error)."""
        content = cid.normalize(cid_text)
        try:
            self._call(f"unpin {content}", self._client.pin.rm, content)
        except StoreUnavailable as exc:
            if "not pinned" not in exc.message:
                raise

    def leaf_digests(self, cid_text: str) -> list[bytes]:
        """The sha2-256 of each raw leaf in file order (a hint for early verification;
        the final whole-DAG check stays authoritative)."""
        content = cid.normalize(cid_text)
        response = self._call(
            f"refs {content}",
            self._client._client.request,
            "/refs",
            (content,),
            opts={"recursive": "true", "timeout": f"{self.timeout:g}s"},
            decoder="json",
            retries=RETRIES,
        )
        digests = []
        for item in response:
            ref = item.get("Ref", "")
            raw = cid.decode(ref)
            if raw[:2] == b"\x01\x55":
                digests.append(raw[-32:])
        return digests

    def export_car(self, cid_text: str, out: BinaryIO) -> int:
        """`dag export` from the node, streamed."""
        content = cid.normalize(cid_text)
        pieces = self._call(
            f"dag export {content}",
            self._client.dag.export,
            content,
            stream=True,
            opts={"timeout": f"{self.timeout:g}s"},
        )
        written = 0
        for piece in pieces:
            written += out.write(piece)
        return written

    def import_car(self, stream: BinaryIO) -> str:
        """`dag import` to the node; returns the root the node reports."""
        result = self._call("dag import", self._client.dag.imprt, stream)
        raw = getattr(result, "_raw", result)
        for item in raw if isinstance(raw, list) else [raw]:
            root = item.get("Root", {}).get("Cid", {}) if isinstance(item, dict) else None
            text = root.get("/") if isinstance(root, dict) else root
            if isinstance(text, str) and text:
                return cid.normalize(text)
        raise InvalidCar(f"the IPFS node imported the CAR but named no root: {str(raw)[:200]}")
