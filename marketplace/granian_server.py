"""granian (a Rust HTTP server, WSGI mode) as the gateway ships it:

    python -m marketplace.granian_server      (what `modelmarket serve` becomes)

granian's main process and its worker processes, with what gunicorn.conf.py gives
gunicorn: our log configuration for its own lines, a folder per server where the workers
share their Prometheus counters, a worker timeout, and workers respawned however often
they die. granian alone stops the whole server when a worker dies within 5.5 s of its
respawn, and has no worker timeout: a worker whose interpreter is stuck (the GIL held,
a deadlock) would hold its connections forever. Here each worker beats a file's mtime
from a thread of its own once a second; the main process kills a worker silent for
`Settings.silent_worker_timeout` (or one still building the app after it) and starts
another. A worker that fails to build the app stops the server with exit 3, as under
gunicorn: a bad configuration is not retried forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from granian._internal import load_target
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.mp import MPServer

from marketplace import logs, serving
from marketplace.config import Settings, load_settings
from marketplace.errors import ConfigurationError, describe

log = logging.getLogger("modelmarket.server")

BEAT = 1.0  # seconds between a worker's heartbeats
BOOT_ERROR = 3  # a worker's exit code when the app could not be built (gunicorn's too)
# A worker that died this soon after its start is replaced after a pause, so a worker
# that dies at once does not spin the machine; gunicorn respawns at once.
QUICK_DEATH = 5.0
PAUSE = 1.0


class GatewayServer(MPServer):
    """granian's main process, with a watchdog over the workers' heartbeats and a serve
    loop that respawns every worker that dies (never stops for it)."""

    def __init__(self, settings: Settings, metrics: Path, **options: Any) -> None:
        super().__init__(**options)
        self.silent_after = settings.silent_worker_timeout
        self.beats = metrics  # heartbeat files sit beside the counters' (*.db) files
        self.killed: set[int] = set()  # pids the watchdog killed, until the loop reaps them
        self.on_startup(self._fresh_metrics)
        self.on_shutdown(lambda: shutil.rmtree(self.beats, ignore_errors=True))

    def _fresh_metrics(self) -> None:
        """Counters restart with the server, as Prometheus expects."""
        shutil.rmtree(self.beats, ignore_errors=True)
        self.beats.mkdir(mode=0o700, parents=True, exist_ok=True)

    # --- in each worker ---------------------------------------------------------------

    def worker_app(self, target: str) -> Callable[..., Any]:
        """The app, built in a worker (granian's target loader), then its heartbeat
        started: until the first beat the watchdog counts from the worker's start, so a
        build that hangs is timed out too."""
        # the main process's handlers came with the fork and would ignore a stop; granian
        # sets the worker's own once the app is built
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            app: Callable[..., Any] = load_target(target, factory=True)
        except BaseException:
            log.exception("worker %s failed to build the app", os.getpid())
            os._exit(BOOT_ERROR)  # what granian's process would exit with is not ours
        beat = self.beats / f"heartbeat-{os.getpid()}"
        _touch(beat)
        threading.Thread(target=_beat, args=(beat,), name="heartbeat", daemon=True).start()
        log.info("worker %s serving", os.getpid())
        return app

    # --- in the main process ----------------------------------------------------------

    def _serve(self, spawn_target: Any, target_loader: Any) -> None:
        self.startup(spawn_target, target_loader)  # type: ignore[no-untyped-call]
        code = self._serve_loop(spawn_target, target_loader)
        if self.interrupt_signal:
            # stopping: a worker that took the same signal itself and left first is not
            # a failure (granian's watchers would count it as one)
            for worker in self.wrks:
                worker.interrupt_by_parent = True
            self.interrupt_children.clear()
        self.shutdown(code)  # type: ignore[no-untyped-call]

    def _serve_loop(self, spawn_target: Any, target_loader: Any) -> int:
        """Until a stop signal (0) or a worker that cannot build the app (BOOT_ERROR)."""
        threading.Thread(target=self._watch_beats, name="watchdog", daemon=True).start()
        while True:
            self.main_loop_interrupt.wait()
            self.main_loop_interrupt.clear()
            if self.interrupt_signal:
                return 0
            dead: list[int] = []
            while self.interrupt_children:  # pop: a watcher may append meanwhile
                dead.append(self.interrupt_children.pop())
            if dead and not self._replace(sorted(set(dead)), spawn_target, target_loader):
                return BOOT_ERROR
            if self.reload_signal and not self.interrupt_signal:
                # HUP: a rolling restart (each new worker, then the old one stopped);
                # granian's reload clears the wake-up a death meanwhile would have set
                self._reload(spawn_target, target_loader)  # type: ignore[no-untyped-call]
                for beat in self.beats.glob("heartbeat-*"):
                    pid = int(beat.name.rpartition("-")[2])
                    if not Path(f"/proc/{pid}").exists():
                        self._forget(pid)
                if self.interrupt_children:
                    self.main_loop_interrupt.set()

    def _replace(self, dead: list[int], spawn_target: Any, target_loader: Any) -> bool:
        """Start a worker for each slot whose worker died; False if one died building
        the app."""
        gone = []
        for idx in dead:
            worker = self.wrks[idx]
            worker.inner.join(1.0)  # its watcher has joined it already
            pid, code = worker.inner.pid, worker.inner.exitcode
            if code is None:
                continue  # the slot has a live worker again (a HUP replaced the dead one)
            self._forget(pid)
            if code == BOOT_ERROR:
                log.error("worker-%d (pid %s) failed to build the app: stopping", idx + 1, pid)
                return False
            log.warning("worker-%d (pid %s) exited (%s): starting another", idx + 1, pid, code)
            if time.monotonic() - worker.birth < QUICK_DEATH:
                time.sleep(PAUSE)
            gone.append(idx)
        if gone and not self.interrupt_signal:  # a stop during the pause starts none
            self._respawn_workers(gone, spawn_target, target_loader)
        return True

    def _forget(self, pid: int) -> None:
        """A dead worker's files: its heartbeat, and its counters' live gauges (none of
        ours is one today, so this removes nothing yet)."""
        from prometheus_client import multiprocess

        (self.beats / f"heartbeat-{pid}").unlink(missing_ok=True)
        self.killed.discard(pid)
        multiprocess.mark_process_dead(pid, str(self.beats))  # type: ignore[no-untyped-call]

    def _watch_beats(self) -> None:
        """Kill a worker whose heartbeat is older than the timeout (or that has none
        that long after its start); the serve loop starts another. A pass that fails
        (the folder gone) is logged and the next one tries again."""
        while not self.interrupt_signal:
            time.sleep(BEAT)
            try:
                self._check_beats()
            except Exception:
                log.exception("the worker watchdog's pass failed")

    def _check_beats(self) -> None:
        now = time.time()
        for worker in list(self.wrks):
            # not is_alive(): its waitpid would race the worker's watcher thread; a
            # dead worker's old heartbeat is handled by the serve loop, and a kill of a
            # pid already reaped is refused below
            pid = worker.inner.pid
            if pid is None or self.interrupt_signal or pid in self.killed:
                continue
            try:
                last = (self.beats / f"heartbeat-{pid}").stat().st_mtime
            except FileNotFoundError:
                last = now - (time.monotonic() - worker.birth)
            if now - last > self.silent_after:
                log.error(
                    "worker-%d (pid %s) silent for %.0f s: killed", worker.idx + 1, pid, now - last
                )
                self.killed.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _touch(path: Path) -> None:
    """`path` touched, its folder made again if it is gone."""
    try:
        path.touch()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch()


def _beat(path: Path) -> None:
    """A worker's heartbeat: needs the GIL, so a stuck interpreter stops it."""
    while True:
        with contextlib.suppress(OSError):  # a full disk: the watchdog will say so
            _touch(path)
        time.sleep(BEAT)


def server(settings: Settings) -> GatewayServer:
    """The gateway under granian as Settings say: address, workers, log format."""
    parent = settings.metrics_dir or serving.METRICS_PARENT
    metrics = serving.metrics_folder("granian", parent)  # made at startup (_fresh_metrics)
    # before any worker imports prometheus_client: the workers (forked) inherit it
    os.environ.update(
        {"PROMETHEUS_MULTIPROC_DIR": str(metrics), "MODELMARKET_METRICS_DIR": str(metrics)}
    )
    return GatewayServer(
        settings,
        metrics,
        target="app:create_app",
        factory=True,
        address=settings.http_host,
        port=settings.http_port,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        websockets=False,
        workers=settings.http_workers,
        blocking_threads=serving.THREADS,
        log_level=LogLevels(settings.log_level),
        log_dictconfig=logs.granian_logconfig(settings),
        respawn_failed_workers=True,
        workers_kill_timeout=serving.GRACEFUL,
    )


def main() -> None:
    """Serve until SIGTERM or SIGINT (workers finish their calls, write them and give
    their leases back), or until a worker fails to build the app (exit 3). A bad
    setting: one line on stderr, exit 2 (as the CLI's)."""
    try:
        settings = load_settings()
        gateway = server(settings)
    except ConfigurationError as exc:
        _, body = describe(exc)
        print(f"error: {body['message']} [{body['error']}]", file=sys.stderr)
        raise SystemExit(2) from None
    gateway.serve(target_loader=gateway.worker_app)


if __name__ == "__main__":
    main()
