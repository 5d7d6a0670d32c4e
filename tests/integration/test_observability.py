"""What an operator watches: /metrics in Prometheus text, summed over the
shipped server's workers, and logs as JSON lines with no secret in any of them."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from inference import codecs
from marketplace import logs, metrics
from marketplace.config import Settings
from tests.support.replicas import serve
from tests.support.world import SETTLER, World

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from one GET /metrics."""
    r = requests.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_add_up_over_the_workers_and_logs_are_clean_json(
    world: World, sqlite_url: str, tmp_path
) -> None:
    from marketplace.devstack.anvil import dev_key

    settler = dev_key(SETTLER)
    server, key, _, log = serve(
        world,
        sqlite_url,
        tmp_path,
        30,
        MODELMARKET_LOG_FORMAT="json",
        MODELMARKET_LOG_LEVEL="debug",
        MODELMARKET_SETTLER_KEY=settler,
    )
    model = str(world.model_id)
    url = f"{server.url}/v2/models/{model}/infer"
    body, headers = codecs.encode_request(
        {"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
    )
    try:
        with requests.Session() as http:  # new connections: both workers serve some
            codes = [
                requests.post(
                    url,
                    data=body,
                    headers={**headers, "Authorization": f"Bearer {key}"},
                    timeout=30,
                ).status_code
                for _ in range(40)
            ]
            # refused before any payment began: a key that does not exist, an x402
            # payment that is not one
            bad_key = {**headers, "Authorization": f"Bearer {key[:-4]}XXXX"}
            assert http.post(url, data=body, headers=bad_key, timeout=30).status_code == 401
            forged = {**headers, "PAYMENT-SIGNATURE": "eyJ" + "A" * 80}
            assert http.post(url, data=body, headers=forged, timeout=30).status_code == 402
        assert codes.count(200) == 30 and codes.count(402) == 10
        # each worker writes its counts to the shared files every FLUSH_EVERY s
        time.sleep(2 * metrics.FLUSH_EVERY)
        samples = [scrape(server.url) for _ in range(6)]  # any worker answers for all
    finally:
        server.stop()
    for got in samples:
        calls = "modelmarket_inference_calls_total"
        assert got[(calls, (("method", "prepaid"), ("model", model), ("status", "ok")))] == 30
        refused = (("method", "prepaid"), ("model", model), ("status", "payment_required"))
        assert got[(calls, refused)] == 10
        latency = (("method", "prepaid"),)
        assert got[("modelmarket_inference_seconds_count", latency)] == 30
        consumed = (("method", "prepaid"), ("model", model))
        assert got[("modelmarket_credits_consumed_total", consumed)] == 30
        assert got[("modelmarket_dependency_up", (("dependency", "database"),))] == 1
        assert got[("modelmarket_dependency_up", (("dependency", "chain"),))] == 1
        for state in ("reserved", "sending", "failed"):
            assert got[("modelmarket_x402_settlements", (("state", state),))] == 0
        assert got[("modelmarket_indexer_lag_blocks", ())] >= 0
        # each worker fetched the model once or found it cached; loads <= workers
        events = "modelmarket_model_cache_events_total"
        assert got[(events, (("event", "hit"),))] + got[(events, (("event", "miss"),))] == 30
        assert 1 <= got[("modelmarket_session_load_seconds_count", ())] <= 2
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines, "the server wrote no log"
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "name", "message"} <= set(record)
    text = log.read_text()
    secret = key.split("_", 2)[2]
    for leaked in (secret, settler, settler.removeprefix("0x"), "A" * 80):
        assert leaked not in text


def test_no_secret_reaches_a_log_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    """Every kind of secret a message or a traceback could quote, in text and in JSON."""
    key = "0x" + "ab" * 32
    rpc_key, db_password = "abcdef0123456789projectkey", "s3cretpassw0rd"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        private_key=key,
        rpc_url=f"https://mainnet.example.io/v3/{rpc_key}",
        database_url=f"postgresql+psycopg://mm:{db_password}@db.internal/mm",
    )
    api_key = "mm_4f3a2b1c_" + "s3cr3t-Token_value-0123456789abcdefghij"
    signature = "0x" + "cd" * 65
    payment = "eyJ4NDAyVmVyc2lvbiI6Miwic2NoZW1lIjoiZXhhY3QiLCJwYXlsb2FkIjp7fX0="
    for fmt in ("text", "json"):
        logs.configure(settings.model_copy(update={"log_format": fmt}))
        log = logging.getLogger("modelmarket.test")
        log.warning("key %s and %s", key, key.removeprefix("0x"))
        log.warning("Authorization: Bearer %s", api_key)
        log.warning("PAYMENT-SIGNATURE %s signed %s", payment, signature)
        log.warning("Max retries exceeded with url: /v3/%s (%s)", rpc_key, db_password)
        try:
            raise ValueError(f"bad settler key {key.upper()} for {api_key}")
        except ValueError:
            log.exception("failed")
        out = capsys.readouterr().err
        assert out.count("\n") >= 5
        secrets = (key, key.removeprefix("0x"), "s3cr3t-Token", signature, payment)
        for secret in (*secrets, key.upper()[2:], rpc_key, db_password):
            assert secret not in out, (fmt, out)
        if fmt == "json":  # scrubbing keeps every line one JSON object
            for line in out.splitlines():
                if line.startswith("{"):
                    json.loads(line)
        assert "mm_4f3a2b1c_[redacted]" in out  # the key's id still names it
    logs.configure(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
