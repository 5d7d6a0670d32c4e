"""Checking one listed model before it is offered: fetched with every byte verified
against its CID (size-capped, timed out), inspected, and loaded once in a bounded child
process. What was found is a ModelVerdict: "ok" with the signature, or why not."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inference.errors import InferenceError, InvalidModel
from inference.inspect import ModelInfo, inspect_bytes
from inference.limits import Limits
from inference.probe import LoadReport, probe_load
from inference.runtime import RuntimeSettings
from marketplace.indexer.card_text import printable
from storage import cid
from storage.errors import ContentMismatch, ContentTooLarge, StorageError
from storage.store import ContentStore


@dataclass(frozen=True)
class ModelChecks:
    """Bounds on checking one listed model at indexing."""

    max_bytes: int = 1 << 30
    fetch_timeout: float = 60.0
    load_memory_bytes: int = 2 << 30
    load_timeout: float = 30.0
    limits: Limits = field(default_factory=Limits)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)  # the gateway's


@dataclass(frozen=True)
class ModelVerdict:
    """What checking a listed model found: "ok" with its signature, or why not."""

    status: str
    error: str | None = None
    signature: dict[str, Any] | None = None
    size: int | None = None
    load_bytes: int | None = None

    def __post_init__(self) -> None:
        # Refusals quote names from the model file: untrusted, unbounded text.
        if self.error is not None:
            object.__setattr__(self, "error", printable(self.error))


def fetch_verified(
    store: ContentStore,
    content: str,
    what: str,
    *,
    sink: Callable[[bytes], object],
    max_bytes: int,
    timeout: float,
) -> tuple[str, str] | None:
    """Stream `content` into `sink`, every byte verified against its CID and at most
    `max_bytes`; None when it all arrived, else (status, reason) for the listing."""
    try:
        cid.verify(store.cat(content, timeout=timeout), content, sink=sink, max_bytes=max_bytes)
    except ContentTooLarge:
        return "too_large", f"the {what} is over {max_bytes} bytes"
    except ContentMismatch as exc:
        return "cid_mismatch", exc.message
    except StorageError as exc:
        if exc.code == "invalid_cid":
            return "invalid_cid", exc.message
        # the store's own message may name internal addresses: its code only
        return "unavailable", f"the {what} could not be fetched ({exc.code})"
    return None


def inspect_and_load(data: bytes, checks: ModelChecks) -> tuple[ModelInfo, LoadReport]:
    """Inspect a model and load it once in a bounded child process; an InvalidModel
    subclass for a model that may not be listed."""
    info = inspect_bytes(data, checks.limits)
    report = probe_load(
        data,
        memory_bytes=checks.load_memory_bytes,
        timeout=checks.load_timeout,
        runtime=checks.runtime,
    )
    return info, report


def check_model(store: ContentStore, model_cid: str, checks: ModelChecks) -> ModelVerdict:
    """Fetch `model_cid` (every byte verified, at most `checks.max_bytes`), inspect it,
    and load it once in a bounded child process."""
    with tempfile.TemporaryFile() as tmp:
        failed = fetch_verified(
            store,
            model_cid,
            "model",
            sink=tmp.write,
            max_bytes=checks.max_bytes,
            timeout=checks.fetch_timeout,
        )
        if failed is not None:
            return ModelVerdict(*failed)
        tmp.seek(0)
        data = tmp.read()
    try:
        info, report = inspect_and_load(data, checks)
    except InvalidModel as exc:  # the model's fault: recorded, never offered
        return ModelVerdict(exc.code, exc.message, size=len(data))
    except InferenceError as exc:  # ours (the probe did not start): checked again later
        return ModelVerdict("unavailable", exc.message, size=len(data))
    return ModelVerdict("ok", None, info.to_dict(), size=len(data), load_bytes=report.peak_bytes)
