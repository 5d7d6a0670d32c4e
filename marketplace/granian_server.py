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
another. A worker that fails to build the app stops the server, as under gunicorn: a
bad configuration is not retried forever.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
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
        self.on_startup(self._fresh_metrics)
        self.on_shutdown(lambda: shutil.rmtree(self.beats, ignore_errors=True))

    def _fresh_metrics(self) -> None:
        """Counters restart with the server, as Prometheus expects."""
        shutil.rmtree(self.beats, ignore_errors=True)
        self.beats.mkdir(parents=True, exist_ok=True)

    # --- in each worker ---------------------------------------------------------------

    def worker_app(self, target: str) -> Callable[..., Any]:
        """The app, built in a worker (granian's target loader), then its heartbeat
        started: until the first beat the watchdog counts from the worker's start, so a
        build that hangs is timed out too."""
        try:
            app: Callable[..., Any] = load_target(target, factory=True)
        except BaseException:
            log.exception("worker %s failed to build the app", os.getpid())
            os._exit(BOOT_ERROR)  # what granian's process would exit with is not ours
        beat = self.beats / f"heartbeat-{os.getpid()}"
        beat.touch()
        threading.Thread(target=_beat, args=(beat,), name="heartbeat", daemon=True).start()
        log.info("worker %s serving", os.getpid())
        return app

    # --- in the main process ----------------------------------------------------------

    def _serve_loop(self, spawn_target: Any, target_loader: Any) -> None:
        threading.Thread(target=self._watch_beats, name="watchdog", daemon=True).start()
        while True:
            self.main_loop_interrupt.wait()
            self.main_loop_interrupt.clear()
            if self.interrupt_signal:
                break
            if self.interrupt_children:
                dead = sorted(set(self.interrupt_children))
                self.interrupt_children.clear()
                if not self._replace(dead, spawn_target, target_loader):
                    self.interrupt_children.extend(dead)  # shutdown's exit code: 1
                    break
            if self.reload_signal:
                # HUP: a rolling restart (each new worker, then the old one stopped)
                self._reload(spawn_target, target_loader)  # type: ignore[no-untyped-call]
                for beat in self.beats.glob("heartbeat-*"):
                    pid = int(beat.name.rpartition("-")[2])
                    if not Path(f"/proc/{pid}").exists():
                        self._forget(pid)

    def _replace(self, dead: list[int], spawn_target: Any, target_loader: Any) -> bool:
        """Start a worker for each that died; False if one died building the app."""
        for idx in dead:
            worker = self.wrks[idx]
            worker.inner.join()
            pid, code = worker.inner.pid, worker.inner.exitcode
            self._forget(pid)
            if code == BOOT_ERROR:
                log.error("worker-%d (pid %s) failed to build the app: stopping", idx + 1, pid)
                return False
            log.warning("worker-%d (pid %s) exited (%s): starting another", idx + 1, pid, code)
            if time.monotonic() - worker.birth < QUICK_DEATH:
                time.sleep(PAUSE)
        self._respawn_workers(dead, spawn_target, target_loader)
        return True

    def _killed(self, pid: int) -> bool:
        return (self.beats / f"killed-{pid}").exists()

    def _forget(self, pid: int) -> None:
        """A dead worker's files: its heartbeat, and its counters' live gauges (none of
        ours is one today, so this removes nothing yet)."""
        from prometheus_client import multiprocess

        for name in (f"heartbeat-{pid}", f"killed-{pid}"):
            (self.beats / name).unlink(missing_ok=True)
        multiprocess.mark_process_dead(pid, str(self.beats))  # type: ignore[no-untyped-call]

    def _watch_beats(self) -> None:
        """Kill a worker whose heartbeat is older than the timeout (or that has none
        that long after its start); the serve loop starts another."""
        while not self.interrupt_signal:
            time.sleep(BEAT)
            now = time.time()
            for worker in list(self.wrks):
                pid = worker.inner.pid
                if pid is None or not worker.inner.is_alive() or self._killed(pid):
                    continue
                try:
                    last = (self.beats / f"heartbeat-{pid}").stat().st_mtime
                except FileNotFoundError:
                    last = now - (time.monotonic() - worker.birth)
                if now - last > self.silent_after:
                    log.error(
                        "worker-%d (pid %s) silent for %.0f s: killed",
                        worker.idx + 1,
                        pid,
                        now - last,
                    )
                    (self.beats / f"killed-{pid}").touch()
                    os.kill(pid, signal.SIGKILL)


def _beat(path: Path) -> None:
    """A worker's heartbeat: needs the GIL, so a stuck interpreter stops it."""
    while True:
        path.touch()
        time.sleep(BEAT)


def server(settings: Settings, *, port: int | None = None) -> GatewayServer:
    """The gateway under granian as Settings say: address, workers, log format."""
    parent = settings.metrics_dir or serving.METRICS_PARENT
    metrics = serving.metrics_folder("granian", parent)
    metrics.mkdir(parents=True, exist_ok=True)
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
        port=settings.http_port if port is None else port,
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
    their leases back), or until a worker fails to build the app (exit 1)."""
    settings = load_settings()
    gateway = server(settings)
    gateway.serve(target_loader=gateway.worker_app)


if __name__ == "__main__":
    main()
