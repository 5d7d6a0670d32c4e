"""The gateway (or a benchmark's app) under granian or gunicorn, started and stopped as
a child process in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from marketplace import serving
from marketplace.config import PROJECT_ROOT, Settings
from marketplace.devstack.ports import free_port

# what each server logs once a worker has built the app and takes connections
READY_LINE = {"gunicorn": " serving", "granian": "Started worker-"}


@dataclass
class Server:
    """A running server's main process and its workers."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path | None = None
    ready_line: str = READY_LINE["gunicorn"]

    def worker_pids(self) -> list[int]:
        """The main process's worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def wait_serving(self, workers: int, timeout: float = 60.0) -> None:
        """Until `workers` of its workers have built the app: with replicas on one port,
        the port answering says nothing about this one."""
        assert self.log is not None, "started without a log"
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(self.ready_line) < workers:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"its {workers} workers did not start (log: {self.log})")
            time.sleep(0.05)

    def stop(self, timeout: float = 40.0) -> None:
        """Graceful stop (workers finish their calls and give their leases back)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


Gunicorn = Server  # the benchmarks' older name


def start_gateway(
    settings: Settings, env: dict[str, str], *, log: Path | None = None, port: int = 0
) -> Server:
    """The gateway as `modelmarket serve` runs it (MODELMARKET_HTTP_SERVER), once its
    health answers."""
    port = port or settings.http_port or free_port()
    return start_server(
        serving.command(settings, port=port),
        {**env, "MODELMARKET_HTTP_PORT": str(port)},
        settings.http_host,
        port,
        log=log,
        ready_path="/v2/health/ready",
    )


def start_gunicorn(
    app: str,
    env: dict[str, str],
    *,
    workers: int = 2,
    threads: int = 4,
    connections: int | None = None,
    reuse_port: bool = False,
    host: str = "127.0.0.1",
    port: int = 0,
    log: Path | None = None,
    ready_path: str = "/",
    ready_timeout: float = 60.0,
    config: Path | None = None,
) -> Server:
    """gunicorn serving `app` ("module:factory()") on `host`:`port` (0: a free loopback
    port). `connections` caps each worker's open connections; `reuse_port` gives each
    worker its own SO_REUSEPORT socket, so the kernel spreads new connections over the
    workers (and over several masters on one port). `config` is a gunicorn.conf.py (its
    hooks); the arguments here override its settings."""
    port = port or free_port()
    command = serving.gunicorn_command(app, host=host, port=port, workers=workers, threads=threads)
    if config is None:
        command[1:3] = []  # no -c
    else:
        command[2] = str(config)
    if connections:
        command[-1:-1] = ["--worker-connections", str(connections)]
    if reuse_port:
        command[-1:-1] = ["--reuse-port"]
    return start_server(
        command, env, host, port, log=log, ready_path=ready_path, ready_timeout=ready_timeout
    )


def start_granian(
    app: str,
    env: dict[str, str],
    *,
    workers: int = 2,
    threads: int = serving.THREADS,
    host: str = "127.0.0.1",
    port: int = 0,
    log: Path | None = None,
    ready_path: str = "/",
    ready_timeout: float = 60.0,
) -> Server:
    """Plain granian (its own command line, none of granian_server's additions) serving
    the WSGI factory `app` ("module:function"), `workers` processes of `threads`
    blocking threads: the benchmarks' unpaid endpoint."""
    port = port or free_port()
    command = [str(Path(sys.executable).parent / "granian"), "--interface", "wsgi"]
    command += ["--factory", "--no-ws", "--http", "1", "--workers", str(workers)]
    command += ["--blocking-threads", str(threads), "--host", host, "--port", str(port), app]
    return start_server(
        command,
        env,
        host,
        port,
        log=log,
        ready_path=ready_path,
        ready_timeout=ready_timeout,
        ready_line=READY_LINE["granian"],
    )


def start_shipped_granian(
    env: dict[str, str],
    *,
    workers: int = 2,
    host: str = "127.0.0.1",
    port: int = 0,
    log: Path | None = None,
    ready_path: str = "/v2/health/ready",
    ready_timeout: float = 60.0,
) -> Server:
    """The gateway under granian as we ship it (marketplace/granian_server.py: its
    watchdog, respawns, metrics folder and logs), `workers` processes on `host`:`port`
    (0: a free loopback port; replicas may share one)."""
    port = port or free_port()
    env = {
        **env,
        "MODELMARKET_HTTP_HOST": host,
        "MODELMARKET_HTTP_PORT": str(port),
        "MODELMARKET_HTTP_WORKERS": str(workers),
    }
    return start_server(
        serving.granian_command(),
        env,
        host,
        port,
        log=log,
        ready_path=ready_path,
        ready_timeout=ready_timeout,
        ready_line=READY_LINE["granian"],  # logged once its worker has bound the socket
    )


def start_server(
    command: list[str],
    env: dict[str, str],
    host: str,
    port: int,
    *,
    log: Path | None = None,
    ready_path: str = "/",
    ready_timeout: float = 60.0,
    ready_line: str = READY_LINE["gunicorn"],
) -> Server:
    """Run `command` in its own process group; return once it answers HTTP on
    `ready_path` (any status)."""
    with open(log or os.devnull, "ab") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            cwd=PROJECT_ROOT,  # where `app.py` lives
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 (we connect, not bind)
    server = Server(process, f"http://{reach}:{port}", log, ready_line)
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            # http on loopback, a URL we built
            urllib.request.urlopen(server.url + ready_path, timeout=5).close()  # noqa: S310
            return server
        except urllib.error.HTTPError:
            return server  # it answers
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{Path(command[0]).name} did not start (log: {log})")
        time.sleep(0.1)
