"""GET /metrics: Prometheus text, for the operator's scraper (keep it inside the
deployment's network, as with any exporter, or set MODELMARKET_METRICS_TOKEN). The
counters every worker wrote, plus gauges read now from the database and the dependency
probes."""

from __future__ import annotations

import hmac
import time

from flask import Blueprint, Response, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import Forbidden

from marketplace import errors, metrics
from marketplace.indexer.follow import health as indexer_health
from marketplace.payments.x402 import settlements
from marketplace.web.gateway import Gateway
from marketplace.web.requests import current_gateway

blueprint = Blueprint("metrics", __name__)

Values = dict[tuple[str, ...], float]


def gauges(gateway: Gateway) -> dict[str, tuple[str, Values]]:
    """The gauges as they are now: name -> (help, {label values: value})."""
    deps = gateway.dependencies.status()
    found: dict[str, tuple[str, Values]] = {
        "modelmarket_dependency_up": (
            "1 when the dependency answers its probe (database, chain, store), else 0.",
            {(name,): float(status.up) for name, status in deps.items()},
        ),
        "modelmarket_model_cache_disk_bytes": (
            "Bytes of verified model files in the cache folder (shared by the workers).",
            {(): float(metrics.disk_bytes(gateway.settings.cache_dir / "files"))},
        ),
    }
    if not deps["database"].up:
        return found
    try:
        with gateway.reads() as session:
            x402 = settlements.counts(session.connection())
            following = indexer_health(session, gateway.deployment)
    except (SQLAlchemyError, errors.ConfigurationError):
        return found  # down since the probe, or nothing deployed: the above says enough
    found["modelmarket_x402_settlements"] = (
        "x402 payments by state: reserved (call in flight), sending (sent, not seen"
        " mined), failed (nothing moved).",
        {(status,): float(n) for status, n in x402.items()},
    )
    if following["status"] == "not_started":
        return found
    head, last = deps["chain"].value, following["last_block"]
    if isinstance(head, int) and isinstance(last, int):
        found["modelmarket_indexer_lag_blocks"] = (
            "Blocks between the chain's head and the indexer's last indexed block.",
            {(): float(max(0, head - last))},
        )
    if following["seconds_since_pass"] is not None:
        found["modelmarket_indexer_seconds_since_pass"] = (
            "Seconds since the leading indexer last finished a pass.",
            {(): float(following["seconds_since_pass"])},
        )
    found["modelmarket_indexer_leader"] = (
        "1 for the process (host:pid) that made the indexer's last pass.",
        {(str(following["leader"] or "unknown"),): 1.0},
    )
    found["modelmarket_indexer_failures"] = (
        "Consecutive failed indexer passes (0 when well).",
        {(): float(following["failures"] or 0)},
    )
    return found


LABELS: dict[str, tuple[str, ...]] = {
    "modelmarket_dependency_up": ("dependency",),
    "modelmarket_x402_settlements": ("state",),
    "modelmarket_indexer_leader": ("leader",),
}


_cached: dict[int, tuple[float, dict[str, tuple[str, Values]]]] = {}
CACHE_SECONDS = 1.0  # scrapers poll; two database reads per scrape is enough per second


def recent_gauges(gateway: Gateway) -> dict[str, tuple[str, Values]]:
    """`gauges`, read at most once a CACHE_SECONDS per worker."""
    now = time.monotonic()
    hit = _cached.get(id(gateway))
    if hit is None or now - hit[0] >= CACHE_SECONDS:
        hit = _cached[id(gateway)] = (now, gauges(gateway))
    return hit[1]


@blueprint.get("/metrics")
def exposition() -> Response:
    """Prometheus text format (not in the OpenAPI document: it is for scrapers). With
    MODELMARKET_METRICS_TOKEN set, only for `Authorization: Bearer <token>`."""
    gateway = current_gateway()
    token = gateway.settings.metrics_token
    if token is not None:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.get_secret_value().encode()):
            raise Forbidden("/metrics wants the operator's bearer token")
    now = metrics.ScrapeTime(lambda: recent_gauges(gateway), LABELS)
    body = metrics.exposition(gateway.settings.metrics_dir, now)
    return Response(body, mimetype=None, content_type=metrics.CONTENT_TYPE)
