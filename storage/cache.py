"""The gateway's model cache: files by CID on local disk, bounded in bytes (LRU), every
byte verified against its CID before the file becomes visible, concurrent requests for
one CID coalesced into one fetch, kept across restarts."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from storage import cid
from storage.cid import ProgressFn
from storage.errors import CacheDiskFull, ContentTooLarge
from storage.store import ContentStore

HOST = socket.gethostname().replace("-", "_")  # download files: <host>~<pid>-<random>
TOUCH_EVERY = 60.0  # seconds: how stale a file's on-disk recency may get


class ModelCache:
    """Verified copies of content from `store` under `root`, at most `max_bytes` in all.

    `get(cid)` returns the path of a file whose bytes hash to `cid`. Disk use (finished
    files plus downloads in progress) never exceeds `max_bytes`: a download evicts the
    least recently used files as it grows, and fails with ContentTooLarge when even an
    empty cache could not hold it.
    """

    def __init__(
        self,
        root: Path,
        store: ContentStore,
        max_bytes: int,
        *,
        timeout: float = 60.0,
        on_event: Callable[[str, int], None] | None = None,
    ) -> None:
        self.root = root
        # ("hit", 0), ("miss", 0), ("fetched", bytes), ("evicted", bytes): for metrics
        self.on_event = on_event or (lambda _kind, _n: None)
        self.store = store
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._files = root / "files"
        self._tmp = root / "tmp"
        self._files.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # cid -> size, oldest first
        self._reserved = 0  # bytes of downloads in progress
        self._inflight: dict[str, Future[Path]] = {}
        self._hot: dict[str, tuple[Path, float]] = {}  # cid -> (path, last os.utime)
        self.fetches = 0  # how many times content was fetched from the store
        for leftover in self._tmp.iterdir():  # a crash mid-download leaves these
            if _abandoned(leftover.name):  # other workers (or hosts) may share the folder
                leftover.unlink(missing_ok=True)
        existing = sorted(self._files.iterdir(), key=lambda p: p.stat().st_mtime)
        for path in existing:
            self._entries[path.name] = path.stat().st_size
        with self._lock:
            self._evict_to(self.max_bytes)

    @property
    def used_bytes(self) -> int:
        """Bytes on disk now: cached files plus downloads in progress."""
        with self._lock:
            return sum(self._entries.values()) + self._reserved

    def __contains__(self, content: str) -> bool:
        with self._lock:
            return cid.normalize(content) in self._entries

    def get(self, content: str, *, on_bytes: ProgressFn | None = None) -> Path:
        """The verified local file for `content`, fetching it once if needed."""
        key = cid.normalize(content)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                path, touched = self._hot.get(key) or (self._files / key, 0.0)
                now = time.monotonic()
                if now - touched > TOUCH_EVERY:  # a syscall per hit costs a small model's run
                    os.utime(path)  # recency survives a restart
                    touched = now
                self._hot[key] = (path, touched)
                future = None
            else:
                future = self._inflight.get(key)
                leader = future is None
                if future is None:
                    future = Future()
                    self._inflight[key] = future
        if future is None:
            self.on_event("hit", 0)
            return path
        if not leader:
            return future.result()
        try:
            self.on_event("miss", 0)  # inside: whatever happens, the future is resolved
            path = self._fetch(key, on_bytes)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(path)
            return path
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _fetch(self, key: str, on_bytes: ProgressFn | None) -> Path:
        try:
            return self._download(key, on_bytes)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise CacheDiskFull(
                f"no room on the model cache's disk for {key}: the models already cached"
                " still serve; free space on it or lower MODELMARKET_CACHE_MAX_BYTES"
            ) from None

    def _download(self, key: str, on_bytes: ProgressFn | None) -> Path:
        self.fetches += 1
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=f"{HOST}~{os.getpid()}-")
        tmp = Path(tmp_name)
        reserved = 0

        def reserve(n: int) -> None:
            nonlocal reserved
            with self._lock:
                if n > self.max_bytes - self._reserved:
                    raise ContentTooLarge(
                        f"{key} is larger than the model cache ({self.max_bytes} bytes)"
                    )
                self._evict_to(self.max_bytes - self._reserved - n)
                self._reserved += n
                reserved += n

        try:
            with os.fdopen(fd, "wb") as out:

                def sink(piece: bytes) -> None:
                    reserve(len(piece))
                    out.write(piece)

                size = cid.verify(
                    self.store.cat(key, timeout=self.timeout),
                    key,
                    sink=sink,
                    on_bytes=on_bytes,
                )
                out.flush()
                os.fsync(out.fileno())
            path = self._files / key
            tmp.replace(path)  # visible only now, and only whole and verified
            with self._lock:
                self._reserved -= reserved
                reserved = 0
                self._entries[key] = size
                self._entries.move_to_end(key)
            self.on_event("fetched", size)
            return path
        finally:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file
            if reserved:
                with self._lock:
                    self._reserved -= reserved

    def _evict_to(self, budget: int) -> None:
        """Drop least recently used files until the finished files fit in `budget`."""
        total = sum(self._entries.values())
        while self._entries and total > budget:
            victim, size = self._entries.popitem(last=False)
            self._hot.pop(victim, None)
            (self._files / victim).unlink(missing_ok=True)
            total -= size
            self.on_event("evicted", size)


def _abandoned(name: str) -> bool:
    """Whether a download file's process is gone: only this host's processes can be
    asked (a pid on another host, sharing the disk, says nothing here)."""
    owner = name.rpartition("-")[0]
    host, _, pid = owner.rpartition("~")
    return host in ("", HOST) and not _alive(pid)


def _alive(pid: str) -> bool:
    """Whether the process that named a download file is still running."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
