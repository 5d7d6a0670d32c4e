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

import functools
import logging
import threading
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
    increment on a paid call's path."""
    key = (metric._name, *labels)
    child = _children.get(key)
    if child is None:
        with _children_lock:
            child = _children.setdefault(key, metric.labels(*labels))
    return child


@_never_raises
def call_finished(model_id: int, method: str, status: str, seconds: float | None) -> None:
    """One paid call ended (`status`: ok or its error code); `seconds` when it ran."""
    model = str(model_id)
    _child(CALLS, model, method, status).inc()
    if seconds is not None:
        _child(LATENCY, method).observe(seconds)
        _child(CONSUMED if status == "ok" else REFUNDED, model, method).inc()


@_never_raises
def cache_event(kind: str, size: int) -> None:
    """The model cache's hook (storage.cache.ModelCache on_event)."""
    _child(CACHE, kind).inc()
    if size:
        _child(CACHE_BYTES, kind).inc(size)


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
