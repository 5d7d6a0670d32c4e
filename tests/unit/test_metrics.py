"""A paid call's counts are added up in the process and written to the counters later
(`metrics.flush`): what a scrape shows must be what counting each call at once would
have shown, under concurrent calls too. And the folder the workers share them in must
be this user's own."""

from __future__ import annotations

import os
import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from marketplace import metrics, serving
from marketplace.errors import ConfigurationError


def samples(text: str, name: str, **labels: str) -> dict[tuple[str, str], float]:
    """(sample name, le) -> value for the samples of `name` carrying `labels`."""
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(name) and labels.items() <= s.labels.items()
    }


def scrape() -> str:
    return metrics.exposition(None, metrics.ScrapeTime(dict, {})).decode()


def test_latency_buckets_and_counts_match_observing_each_call():
    durations = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.2, 0.2, 7.0, 42.0]
    for seconds in durations:
        metrics.call_finished(9001, "bucket-test", "ok", seconds)
    metrics.call_finished(9001, "bucket-test", "payment_required", None)
    metrics.call_finished(9001, "bucket-test", "model_failed", 0.004)
    reference = CollectorRegistry()
    histogram = Histogram("ref", "", buckets=metrics.LATENCY._upper_bounds[:-1], registry=reference)
    for seconds in [*durations, 0.004]:
        histogram.observe(seconds)
    want = {
        (name.replace("ref", "modelmarket_inference_seconds"), le): value
        for (name, le), value in samples(generate_latest(reference).decode(), "ref").items()
        if not name.endswith("_created")
    }
    text = scrape()
    got = samples(text, "modelmarket_inference_seconds", method="bucket-test")
    assert {k: v for k, v in got.items() if not k[0].endswith("_created")} == want
    for status, count in (("ok", 9), ("payment_required", 1), ("model_failed", 1)):
        calls = samples(text, "modelmarket_inference_calls", method="bucket-test", status=status)
        assert calls[("modelmarket_inference_calls_total", "")] == count
    ok = samples(text, "modelmarket_credits_consumed", method="bucket-test")
    assert ok[("modelmarket_credits_consumed_total", "")] == len(durations)
    back = samples(text, "modelmarket_credits_refunded", method="bucket-test")
    assert back[("modelmarket_credits_refunded_total", "")] == 1


def test_no_count_is_lost_to_concurrent_calls_and_flushes():
    threads, each = 8, 5_000

    def calls() -> None:
        for _ in range(each):
            metrics.call_finished(9002, "thread-test", "ok", 0.001)
            metrics.cache_event("thread-test", 10)

    flushing = threading.Event()

    def flusher() -> None:
        while not flushing.is_set():
            metrics.flush()

    extra = threading.Thread(target=flusher)
    extra.start()
    workers = [threading.Thread(target=calls) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    flushing.set()
    extra.join()
    text = scrape()
    calls_total = samples(text, "modelmarket_inference_calls", method="thread-test")
    assert calls_total[("modelmarket_inference_calls_total", "")] == threads * each
    latency = samples(text, "modelmarket_inference_seconds", method="thread-test")
    assert latency[("modelmarket_inference_seconds_count", "")] == threads * each
    cache = samples(text, "modelmarket_model_cache", event="thread-test")
    assert cache[("modelmarket_model_cache_events_total", "")] == threads * each
    assert cache[("modelmarket_model_cache_bytes_total", "")] == threads * each * 10


def test_a_metrics_folder_that_is_a_link_or_another_users_is_refused(tmp_path):
    ours = tmp_path / "ours"
    assert serving.metrics_folder("granian", ours).parent == ours
    link = tmp_path / "link"
    link.symlink_to(ours)
    with pytest.raises(ConfigurationError, match="link or another user's"):
        serving.metrics_folder("granian", link)
    if os.getuid() == 0:  # only root can give a folder away
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 4242, 4242)
        with pytest.raises(ConfigurationError, match="link or another user's"):
            serving.metrics_folder("granian", theirs)
