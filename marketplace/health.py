"""What a replica's health answer says about the outside: whether the database, the
chain's JSON-RPC endpoint and the content store answer, each probed with a short
timeout and remembered for a moment (a load balancer polling every second must not
become a load of its own). Flask-free: the web face and /metrics both read it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial

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
    """The outside parts a gateway needs, each probed at most every REMEMBER seconds, all
    at once, one probe per dependency in flight (callers share it), and none waited for
    past PROBE_TIMEOUT: a dependency that hangs is down, and holds no request thread."""

    def __init__(self, checks: dict[str, Callable[[], object]]) -> None:
        self.checks = checks
        self._known: dict[str, Status] = {}
        self._running: dict[str, Future[Status]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(len(checks) or 1, thread_name_prefix="health")

    def status(self) -> dict[str, Status]:
        """Every dependency's state, probing the ones not checked lately."""
        now = time.monotonic()
        waiting: dict[str, Future[Status]] = {}
        started: dict[str, Future[Status]] = {}
        with self._lock:
            for name, check in self.checks.items():
                known = self._known.get(name)
                if known is not None and now - known.checked_at < REMEMBER:
                    continue
                if name not in self._running:
                    started[name] = self._running[name] = self._pool.submit(probe, check)
                waiting[name] = self._running[name]
        for name, future in started.items():  # outside the lock: a done one calls back now
            future.add_done_callback(partial(self._done, name))
        wait(list(waiting.values()), timeout=PROBE_TIMEOUT + 0.5)
        with self._lock:
            found = dict(self._known)
        for name, future in waiting.items():
            if not future.done():  # still running: down for this answer
                message = f"no answer to its probe within {PROBE_TIMEOUT:g} s"
                found[name] = Status(False, "probe_timeout", message, now)
        return found

    def _done(self, name: str, future: Future[Status]) -> None:
        with self._lock:
            self._running.pop(name, None)
            self._known[name] = future.result()


def database_check(engine: Engine) -> Callable[[], object]:
    """SELECT 1 on a pooled connection."""

    def check() -> object:
        with engine.connect() as conn:
            return conn.execute(text("SELECT 1")).scalar()

    return check
