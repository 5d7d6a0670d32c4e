"""The gateway's Prometheus metrics (prometheus-client), Flask-free.

Counters and the latency histogram are written where things happen (the payment
pipeline, the model and session caches). Under either server they are shared across the
workers through prometheus-client's multiprocess mode: granian_server.py (or
gunicorn.conf.py) gives each server a directory (MODELMARKET_METRICS_DIR, also
PROMETHEUS_MULTIPROC_DIR) before any worker imports this module, and a scrape of any
worker sums them all. What lives in the database or outside (x402 settlements pending
and failed, the indexer's lag and leader, dependencies up) is read at scrape time, so
every worker reports the same."""

from __future__ import annotations

import bisect
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Metrics written as things happen; in their own registry (not the library's global
# one), which is what a scrape reads when there is no multiprocess directory.
LIVE = CollectorRegistry(auto_describe=True)

CALLS = Counter(
    "modelmarket_inference_calls",
    "Paid inference calls by model, payment method and outcome (ok, or the error code).",
    ["model", "method", "status"],
    registry=LIVE,
)
LATENCY = Histogram(
    "modelmarket_inference_seconds",
    "Time of a paid call inside the gateway: payment, model, inference, settlement.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=LIVE,
)
CONSUMED = Counter(
    "modelmarket_credits_consumed",
    "Calls charged (a prepaid credit spent, or an x402 payment settled), by model.",
    ["model", "method"],
    registry=LIVE,
)
REFUNDED = Counter(
    "modelmarket_credits_refunded",
    "Calls whose payment was given back because the call failed after it began.",
    ["model", "method"],
    registry=LIVE,
)
CACHE = Counter(
    "modelmarket_model_cache_events",
    "Model cache lookups and changes: hit, miss, fetched, evicted.",
    ["event"],
    registry=LIVE,
)
CACHE_BYTES = Counter(
    "modelmarket_model_cache_bytes",
    "Bytes fetched into (event=fetched) and evicted from (event=evicted) the model cache.",
    ["event"],
    registry=LIVE,
)
SESSION_LOADS = Histogram(
    "modelmarket_session_load_seconds",
    "onnxruntime session loads (a model's first call in a worker, or after eviction).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30),
    registry=LIVE,
)

log = logging.getLogger("modelmarket.metrics")
_failed = threading.Event()

P = ParamSpec("P")


def _never_raises(hook: Callable[P, None]) -> Callable[P, None]:
    """A metric that cannot be written (its folder gone, a full disk) must not fail the
    paid call that reports it: logged once per process, then dropped."""

    @functools.wraps(hook)
    def safe(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:
            if not _failed.is_set():
                _failed.set()
                log.exception("writing a metric failed; metrics are incomplete from now")

    return safe


_children: dict[tuple[str, ...], Any] = {}
_children_lock = threading.Lock()


def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered: the library's lookup costs more than the
    increment."""
    key = (metric._name, *labels)
    child = _children.get(key)
    if child is None:
        with _children_lock:
            child = _children.setdefault(key, metric.labels(*labels))
    return child


# A paid call's counts are added up in this process and written to the counters every
# FLUSH_EVERY seconds, at each scrape and when a worker stops (`flush`): in multiprocess
# mode every increment is an mmap write under the library's lock, ~10 us a call on one
# thread and twice that with 8 threads contending; adding to a dict costs ~1 us. A
# worker killed outright loses at most FLUSH_EVERY seconds of counts; another worker's
# scrape shows its counts up to FLUSH_EVERY seconds late.
FLUSH_EVERY = 0.25
_COUNTERS = {
    "calls": CALLS,
    "consumed": CONSUMED,
    "refunded": REFUNDED,
    "cache": CACHE,
    "cache_bytes": CACHE_BYTES,
}
_BOUNDS = [*LATENCY._upper_bounds]  # the buckets' upper bounds, +Inf last
_pending_lock = threading.Lock()
_flush_lock = threading.Lock()  # one flush at a time: a stop's flush waits for the timer's
_pending: dict[tuple[str, ...], float] = {}  # (counter, *labels) -> amount
_observed: dict[str, list[float]] = {}  # latency by method: a count per bucket, then the sum
_flusher_pid = 0


def _after_fork() -> None:
    """A forked child starts with nothing pending and locks no thread of its holds."""
    global _pending_lock, _flush_lock, _children_lock, _pending, _observed
    _pending_lock, _flush_lock, _children_lock = (
        threading.Lock(),
        threading.Lock(),
        threading.Lock(),
    )
    _pending, _observed = {}, {}


os.register_at_fork(after_in_child=_after_fork)


def _flush_soon() -> None:
    """This process's flusher, started with its first count (a forked worker starts its
    own: threads do not survive a fork)."""
    global _flusher_pid
    with _pending_lock:
        if _flusher_pid == os.getpid():
            return
        _flusher_pid = os.getpid()
    threading.Thread(target=_flush_every, name="metrics-flush", daemon=True).start()


def _flush_every() -> None:
    while True:
        time.sleep(FLUSH_EVERY)
        flush()


@_never_raises
def flush() -> None:
    """Write this process's counts so far to the counters (shared ones: the files)."""
    global _pending, _observed
    with _flush_lock:
        with _pending_lock:
            counts, _pending = _pending, {}
            observed, _observed = _observed, {}
        for (name, *labels), amount in counts.items():
            _child(_COUNTERS[name], *labels).inc(amount)
        for method, tally in observed.items():
            # what Histogram.observe does per observation, once per bucket
            child = _child(LATENCY, method)
            for i, n in enumerate(tally[:-1]):
                if n:
                    child._buckets[i].inc(n)
            child._sum.inc(tally[-1])


@_never_raises
def call_finished(model_id: int, method: str, status: str, seconds: float | None) -> None:
    """One paid call ended (`status`: ok or its error code); `seconds` when it ran."""
    if _flusher_pid != os.getpid():
        _flush_soon()
    model = str(model_id)
    with _pending_lock:
        key: tuple[str, ...] = ("calls", model, method, status)
        _pending[key] = _pending.get(key, 0.0) + 1
        if seconds is not None:
            key = ("consumed" if status == "ok" else "refunded", model, method)
            _pending[key] = _pending.get(key, 0.0) + 1
            tally = _observed.get(method)
            if tally is None:
                tally = _observed[method] = [0.0] * (len(_BOUNDS) + 1)
            tally[bisect.bisect_left(_BOUNDS, seconds)] += 1
            tally[-1] += seconds


@_never_raises
def cache_event(kind: str, size: int) -> None:
    """The model cache's hook (storage.cache.ModelCache on_event)."""
    if _flusher_pid != os.getpid():
        _flush_soon()
    with _pending_lock:
        _pending["cache", kind] = _pending.get(("cache", kind), 0.0) + 1
        if size:
            _pending["cache_bytes", kind] = _pending.get(("cache_bytes", kind), 0.0) + size


@_never_raises
def session_loaded(seconds: float) -> None:
    """The session cache's hook (inference.sessions.SessionCache on_load)."""
    SESSION_LOADS.observe(seconds)


class ScrapeTime:
    """Gauges read when scraped: `read()` returns name -> (help, {labels: value})."""

    def __init__(
        self,
        read: Callable[[], dict[str, tuple[str, dict[tuple[str, ...], float]]]],
        labels: dict[str, tuple[str, ...]],
    ) -> None:
        self.read = read
        self.labels = labels  # each gauge's label names (none if absent)

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, values) in self.read().items():
            label_names = self.labels.get(name, ())
            family = GaugeMetricFamily(name, help_text, labels=label_names)
            for labels, value in values.items():
                family.add_metric(list(labels), value)
            yield family


def exposition(metrics_dir: Path | None, scrape_time: ScrapeTime) -> bytes:
    """The Prometheus text: every worker's counters (or this process's), then the
    gauges read now."""
    flush()  # this worker's own counts; the others' are at most FLUSH_EVERY s behind
    if metrics_dir is not None:
        shared = CollectorRegistry()
        MultiProcessCollector(shared, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    else:
        shared = LIVE
    now = CollectorRegistry()
    now.register(scrape_time)
    return generate_latest(shared) + generate_latest(now)


def disk_bytes(folder: Path) -> int:
    """Bytes of the files in `folder` (the model cache, shared by the workers)."""
    try:
        return sum(p.stat().st_size for p in folder.iterdir())
    except FileNotFoundError:
        return 0
