"""Logging for the gateway and the indexer: text or one JSON object per line
(MODELMARKET_LOG_FORMAT), at MODELMARKET_LOG_LEVEL, on stderr. Every line, traceback
included, passes through `scrub` last, so no private key, API key, bearer token, x402
payment or signature reaches a log whatever a message or an exception quotes."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any
from urllib.parse import urlsplit

from pythonjsonlogger.json import JsonFormatter

from marketplace.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(process)d %(threadName)s %(name)s %(message)s"

# What a secret looks like where it could be quoted. Transaction hashes and addresses
# (32 and 20 bytes) stay: they are public and what an operator searches logs for.
_PATTERNS = [
    # an API key: its id may show (it names the key in /api/v1/keys), its secret not
    (re.compile(r"\b(mm_[A-Za-z0-9]+_)[A-Za-z0-9_-]{8,}"), r"\1[redacted]"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    # a 65-byte ECDSA signature (x402 authorizations, SIWE sign-ins)
    (re.compile(r"0x[0-9a-fA-F]{130}\b"), "[signature]"),
    # base64 JSON, as in PAYMENT-SIGNATURE and PAYMENT-REQUIRED headers
    (re.compile(r"eyJ[A-Za-z0-9+/_=-]{24,}"), "[payment]"),
]


class Scrubbed(logging.Formatter):
    """A formatter whose every output line is scrubbed of secrets (`secrets`: the
    configured keys, matched exactly, with or without 0x)."""

    def __init__(self, inner: logging.Formatter, secrets: list[str]) -> None:
        super().__init__()
        self.inner = inner
        exact = sorted({s for k in secrets for s in (k, k.removeprefix("0x")) if len(s) >= 8})
        pattern = "|".join(re.escape(s) for s in exact)
        self.exact = re.compile(pattern, re.IGNORECASE) if exact else None

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(self.inner.format(record))

    def scrub(self, text: str) -> str:
        """`text` without the secrets it quoted."""
        if self.exact is not None:
            text = self.exact.sub("[key]", text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def formatter(settings: Settings) -> Scrubbed:
    """The formatter every handler of ours uses (gunicorn's too)."""
    inner: logging.Formatter = (
        JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "asctime": "time"})
        if settings.log_format == "json"
        else logging.Formatter(TEXT_FORMAT)
    )
    keys = [settings.private_key, settings.settler_key, settings.secret_key]
    keys.append(settings.metrics_token)
    secrets = [k.get_secret_value() for k in keys if k is not None]
    # a hosted RPC URL carries its API key in its path or query; a database URL its password
    if settings.rpc_url:
        parts = urlsplit(settings.rpc_url)
        secrets += [p for p in (parts.path.strip("/"), parts.query, parts.password) if p]
    if settings.database_url:
        secrets += [p for p in [urlsplit(settings.database_url).password] if p]
    return Scrubbed(inner, secrets)


def configure(settings: Settings) -> None:
    """Our loggers ("modelmarket.*") to stderr through the scrubbing formatter, once per
    process (a second call replaces the handler: tests build many apps)."""
    log = logging.getLogger("modelmarket")
    for old in [h for h in log.handlers if getattr(h, "modelmarket", False)]:
        log.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings))
    handler.modelmarket = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(settings.log_level.upper())
    log.propagate = False


def gunicorn_logconfig(settings: Settings) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its own loggers through the same formatter."""
    return _server_logconfig(settings, "gunicorn.error", "gunicorn.access")


def granian_logconfig(settings: Settings) -> dict[str, Any]:
    """granian's `log_dictconfig` (its main process and each worker): its own loggers,
    and our server's ("modelmarket.server"), through the same formatter."""
    config = _server_logconfig(settings, "_granian", "granian.access")
    config["loggers"]["modelmarket.server"] = config["loggers"]["_granian"]
    return config


def _server_logconfig(settings: Settings, errors: str, access: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"modelmarket": {"()": formatter, "settings": settings}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "modelmarket",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            errors: {
                "level": settings.log_level.upper(),
                "handlers": ["stderr"],
                "propagate": False,
            },
            # no access log (neither server's default): a line per paid call costs CPU on
            # its path; a load balancer's log has the same facts
            access: {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }
