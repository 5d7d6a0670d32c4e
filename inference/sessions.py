"""onnxruntime sessions: a cache keyed by CID and bounded by the memory sessions really
hold (LRU), one load per model under concurrency, thread settings, a per-call time limit,
input size limits, a process-wide memory cap so one call cannot exhaust the machine, and
memory given back after a run that grew it, so a worker returns near its baseline."""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from inference import memory
from inference.errors import (
    InferenceFailed,
    InferenceTimeout,
    ResourceExhausted,
)
from inference.inspect import ModelInfo, inspect_bytes
from inference.limits import Limits
from inference.runtime import RuntimeSettings, cap_process_memory, create_session

__all__ = ["LoadedModel", "RuntimeSettings", "SessionCache", "cap_process_memory"]

# A run shorter than this cannot have grown resident memory much: the kernel zeroes every
# page it hands out (~10-30 GB/s), so 1 ms is 10-30 MB at most. Faster runs skip the check
# (even its ~1 us read of /proc), and fast failures (bad input, refused allocations: free
# to the caller, whose credit comes back) do not pay for a release.
_SLOW_RUN_S = 0.001
_RSS_CHECK_INTERVAL_S = 0.5
_LONG_RUN_S = 0.05


@dataclass
class LoadedModel:
    """A ready session and the signature it was checked against. `size` is what the
    session holds (see SessionCache._load), not the file's size (`info.size`)."""

    key: str
    session: ort.InferenceSession
    info: ModelInfo
    size: int

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.info.outputs]


class SessionCache:
    """InferenceSessions by key (the model's CID), holding at most `max_bytes` of memory."""

    def __init__(
        self,
        max_bytes: int,
        runtime: RuntimeSettings | None = None,
        limits: Limits | None = None,
        on_load: Callable[[float], None] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.on_load = on_load or (lambda _seconds: None)  # each load's time, for metrics
        self.runtime = runtime or RuntimeSettings()
        self.limits = limits or Limits()
        cap_process_memory(self.runtime.arena_max_bytes)
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._entries: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Future[LoadedModel]] = {}
        self.loads = 0
        self.releases = 0
        _shrinker()  # the process's first session sets up onnxruntime: not a model's cost
        self._release_above = memory.rss_bytes() + self.runtime.release_above_bytes
        self._rss_checked = 0.0  # perf_counter of the last resident-memory check

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(m.size for m in self._entries.values())

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: str, path: Path, size_hint: int | None = None) -> LoadedModel:
        """The session for `key`, loading `path` once however many callers ask at once.
        `size_hint`: what loading it cost in the load probe (its peak), if known."""
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
            loaded = self._load(key, path, size_hint or 0)
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

    def _load(self, key: str, path: Path, size_hint: int) -> LoadedModel:
        """Inspect and load; the entry counts max(file size, resident memory the load
        added, `size_hint`): a 111-byte model can hold 1 GiB once loaded."""
        started = time.perf_counter()
        data = path.read_bytes()
        info = inspect_bytes(data, self.limits)  # never run what would not be listed
        # One load at a time, so the growth measured is this load's (concurrent runs
        # still add noise; the probe's peak, passed as `size_hint`, has none).
        with self._load_lock:
            memory.trim_heap()  # what inspection freed (~50 MB for MiniLM) is not the load's
            before = memory.rss_bytes()
            try:
                session = create_session(data, self.runtime)
            except Exception as exc:
                raise InferenceFailed(
                    f"onnxruntime cannot load the model: {_first_line(exc)}"
                ) from None
            memory.trim_heap()  # load-time transients (parsed protobufs) are not held
            after = memory.rss_bytes()
            self._release_above = after + self.runtime.release_above_bytes
        self.loads += 1
        self.on_load(time.perf_counter() - started)
        return LoadedModel(key, session, info, max(len(data), after - before, size_hint))

    def _evict(self) -> None:
        total = sum(m.size for m in self._entries.values())
        while len(self._entries) > 1 and total > self.max_bytes:
            _, victim = self._entries.popitem(last=False)
            total -= victim.size

    def run(
        self, model: LoadedModel, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one call within the time limit; domain errors for every failure. The inputs
        are bounded where they are decoded (`codecs.decode_request`), before allocation."""
        names = outputs or model.output_names
        options = ort.RunOptions()
        token = _watchdog.watch(options, self.runtime.time_limit_s)
        start = time.perf_counter()
        try:
            results = model.session.run(names, inputs, options)
        except Exception as exc:
            error = self._run_error(exc, options)
            if self.runtime.release_memory:
                self._after_run(start, failed=True)
            raise error from None
        finally:
            _watchdog.cancel(token)
        if self.runtime.release_memory:
            self._after_run(start, failed=False)
        return dict(zip(names, results, strict=True))

    def _after_run(self, start: float, *, failed: bool) -> None:
        """Release memory after a slow run that failed (a stopped run leaves its growth in
        the arena) or left resident memory far above its level after load. Not on every
        run: shrinking costs +2-3 us on a 10 us call, and a fast run cannot have grown."""
        now = time.perf_counter()
        if now - start < _SLOW_RUN_S:
            return
        if failed:
            self.release_memory()
            return
        # Reading resident memory is a syscall, which under many threads hands the GIL
        # around: after a long run always (it costs nothing beside the run), after a
        # merely slow one (a busy worker's small calls) at most once per interval.
        if now - start < _LONG_RUN_S and now - self._rss_checked < _RSS_CHECK_INTERVAL_S:
            return
        self._rss_checked = now
        if memory.rss_bytes() > self._release_above:
            self.release_memory()

    def release_memory(self) -> None:
        """Give the arena's free chunks and the C heap's free pages back to the OS (a
        growing Loop stopped at the time limit otherwise leaves the worker at its peak)."""
        _shrink_arena()
        memory.trim_heap()
        self.releases += 1
        self._release_above = memory.rss_bytes() + self.runtime.release_above_bytes

    def _run_error(self, exc: Exception, options: ort.RunOptions) -> Exception:
        text = str(exc)
        if options.terminate or "terminate" in text.lower():
            return InferenceTimeout(
                f"the run took longer than {self.runtime.time_limit_s:g} s and was stopped"
            )
        if "Available memory of" in text or "bad_alloc" in text:
            return ResourceExhausted(
                "the run asked for more memory than the gateway allows"
                f" ({self.runtime.arena_max_bytes} bytes)"
            )
        return InferenceFailed(f"onnxruntime failed the run: {_first_line(exc)}")


@cache
def _shrinker() -> tuple[ort.InferenceSession, ort.RunOptions]:
    """A one-node session on the shared arena whose runs shrink it. Shrinking is a run
    option applied as a run ends; running this after the fact frees what another run left
    in the shared arena, so only the runs that need it pay."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "shrink",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = create_session(model.SerializeToString(), RuntimeSettings())
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return session, options


_shrink_input = {"x": np.zeros(1, np.float32)}


def _shrink_arena() -> None:
    session, options = _shrinker()
    session.run(None, _shrink_input, options)


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
