"""What a replica's health answer says about the outside: whether the database, the
chain's JSON-RPC endpoint and the content store answer, each probed with a short
timeout and remembered for a moment (a load balancer polling every second must not
become a load of its own). Flask-free: the web face and /metrics both read it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, text

from marketplace import errors

PROBE_TIMEOUT = 2.0  # seconds one probe may take
REMEMBER = 2.0  # seconds a probe's answer is reused


@dataclass(frozen=True)
class Status:
    """One dependency's state: up, or down with a stable code and a message."""

    up: bool
    error: str | None = None
    message: str | None = None
    checked_at: float = 0.0
    value: object = None  # what the probe read (the chain's head block)

    def as_dict(self) -> dict[str, object]:
        """The health body's entry."""
        if self.up:
            return {"status": "up"}
        return {"status": "down", "error": self.error, "message": self.message}


def probe(check: Callable[[], object]) -> Status:
    """Run `check`; down with the error's stable code and message if it raises."""
    try:
        value = check()
    except Exception as exc:  # any failure means down; the code says which kind
        _, body = errors.describe(exc)
        return Status(False, str(body["error"]), str(body["message"]), time.monotonic())
    return Status(True, checked_at=time.monotonic(), value=value)


class Dependencies:
    """The outside parts a gateway needs, each probed at most every REMEMBER seconds."""

    def __init__(self, checks: dict[str, Callable[[], object]]) -> None:
        self.checks = checks
        self._known: dict[str, Status] = {}
        self._lock = threading.Lock()

    def status(self) -> dict[str, Status]:
        """Every dependency's state, probing the ones not checked lately."""
        now = time.monotonic()
        with self._lock:
            stale = [
                name
                for name in self.checks
                if name not in self._known or now - self._known[name].checked_at >= REMEMBER
            ]
        fresh = {name: probe(self.checks[name]) for name in stale}
        with self._lock:
            self._known.update(fresh)
            return dict(self._known)


def database_check(engine: Engine) -> Callable[[], object]:
    """SELECT 1 on a pooled connection."""

    def check() -> object:
        with engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar()

    return check
