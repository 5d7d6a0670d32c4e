"""onnxruntime sessions: a cache keyed by CID and bounded in bytes (LRU), one load per
model under concurrency, thread settings, a per-call time limit, input size limits and a
process-wide memory cap so one call cannot exhaust the machine."""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference.errors import (
    InferenceFailed,
    InferenceTimeout,
    InputTooLarge,
    ResourceExhausted,
)
from inference.inspect import Limits, ModelInfo, inspect_bytes

_arena_lock = threading.Lock()
_arena_bytes: int | None = None


def cap_process_memory(max_bytes: int) -> None:
    """Register one CPU arena capped at `max_bytes` for the whole process (sessions opt in
    with `session.use_env_allocators`). The first call wins: onnxruntime allows one."""
    global _arena_bytes
    with _arena_lock:
        if _arena_bytes is not None:
            return
        cfg = ort.OrtArenaCfg(
            {"max_mem": max_bytes, "arena_extend_strategy": 1, "initial_chunk_size_bytes": 1 << 20}
        )
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(info, cfg)
        _arena_bytes = max_bytes


@dataclass(frozen=True)
class RuntimeSettings:
    """How sessions run; the gateway fills these from its Settings."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    time_limit_s: float = 10.0
    max_input_elements: int = 1 << 24
    arena_max_bytes: int = 4 << 30


@dataclass
class LoadedModel:
    """A ready session and the signature it was checked against."""

    key: str
    session: ort.InferenceSession
    info: ModelInfo
    size: int

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.info.outputs]


class SessionCache:
    """InferenceSessions by key (the model's CID), at most `max_bytes` of model files."""

    def __init__(
        self, max_bytes: int, runtime: RuntimeSettings | None = None, limits: Limits | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.runtime = runtime or RuntimeSettings()
        self.limits = limits or Limits()
        cap_process_memory(self.runtime.arena_max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Future[LoadedModel]] = {}
        self.loads = 0

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(m.size for m in self._entries.values())

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: str, path: Path) -> LoadedModel:
        """The session for `key`, loading `path` once however many callers ask at once."""
        with self._lock:
            loaded = self._entries.get(key)
            if loaded is not None:
                self._entries.move_to_end(key)
                return loaded
            future = self._loading.get(key)
            leader = future is None
            if future is None:
                future = Future()
                self._loading[key] = future
        if not leader:
            return future.result()
        try:
            loaded = self._load(key, path)
            with self._lock:
                self._entries[key] = loaded
                self._evict()
            future.set_result(loaded)
            return loaded
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._loading.pop(key, None)

    def _load(self, key: str, path: Path) -> LoadedModel:
        data = path.read_bytes()
        info = inspect_bytes(data, self.limits)  # never run what would not be listed
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.runtime.intra_op_threads
        options.inter_op_num_threads = self.runtime.inter_op_threads
        options.add_session_config_entry("session.use_env_allocators", "1")
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise InferenceFailed(
                f"onnxruntime cannot load the model: {_first_line(exc)}"
            ) from None
        self.loads += 1
        return LoadedModel(key, session, info, len(data))

    def _evict(self) -> None:
        total = sum(m.size for m in self._entries.values())
        while len(self._entries) > 1 and total > self.max_bytes:
            _, victim = self._entries.popitem(last=False)
            total -= victim.size

    def run(
        self, model: LoadedModel, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one call within the time limit; domain errors for every failure."""
        total = sum(int(a.size) for a in inputs.values())
        if total > self.runtime.max_input_elements:
            raise InputTooLarge(
                f"the inputs hold {total} elements; the limit is {self.runtime.max_input_elements}"
            )
        names = outputs or model.output_names
        options = ort.RunOptions()
        token = _watchdog.watch(options, self.runtime.time_limit_s)
        try:
            results = model.session.run(names, inputs, options)
        except Exception as exc:
            text = str(exc)
            if options.terminate or "terminate" in text.lower():
                raise InferenceTimeout(
                    f"the run took longer than {self.runtime.time_limit_s:g} s and was stopped"
                ) from None
            if "Available memory of" in text or "bad_alloc" in text:
                raise ResourceExhausted(
                    "the run asked for more memory than the gateway allows"
                    f" ({self.runtime.arena_max_bytes} bytes)"
                ) from None
            raise InferenceFailed(f"onnxruntime failed the run: {_first_line(exc)}") from None
        finally:
            _watchdog.cancel(token)
        return dict(zip(names, results, strict=True))


class _Watchdog:
    """One thread that sets `terminate` on runs past their deadline. A threading.Timer
    per call costs ~60 us of thread start, more than a small model's whole run.
    Cancelled entries stay in the heap until their deadline (lazy deletion)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, ort.RunOptions] = {}
        self._seq = 0
        self._thread: threading.Thread | None = None

    def watch(self, options: ort.RunOptions, seconds: float) -> int:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ort-watchdog", daemon=True)
                self._thread.start()
            self._seq += 1
            self._live[self._seq] = options
            heapq.heappush(self._heap, (time.monotonic() + seconds, self._seq))
            if self._heap[0][1] == self._seq:
                self._cond.notify()
            return self._seq

    def cancel(self, token: int) -> None:
        with self._cond:
            self._live.pop(token, None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                now = time.monotonic()
                if deadline <= now:
                    heapq.heappop(self._heap)
                    options = self._live.pop(token, None)
                    if options is not None:
                        options.terminate = True
                else:
                    self._cond.wait(deadline - now)


_watchdog = _Watchdog()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
