"""The gateway under gunicorn, started and stopped as a child process."""

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

from marketplace.config import PROJECT_ROOT
from marketplace.devstack.ports import free_port


@dataclass
class Gunicorn:
    """A running gunicorn master and its workers."""

    process: subprocess.Popen[bytes]
    url: str

    def worker_pids(self) -> list[int]:
        """The master's worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (workers finish their calls and run their exit hooks)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


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
) -> Gunicorn:
    """gunicorn serving `app` ("module:factory()") on `host`:`port` (0: a free loopback
    port), in its own process group, once it answers HTTP on `ready_path`. `connections` caps each
    worker's open connections (a worker at the cap leaves new ones to the others);
    `reuse_port` gives each worker its own SO_REUSEPORT socket, so the kernel spreads
    new connections over the workers instead of the first to wake taking them. `config`
    is a gunicorn.conf.py (its hooks); the arguments here override its settings."""
    port = port or free_port()
    command = [str(Path(sys.executable).parent / "gunicorn")]
    if config is not None:
        command += ["-c", str(config)]
    command += ["-w", str(workers)]
    command += ["--threads", str(threads), "-b", f"{host}:{port}", app]
    if connections:
        command[-1:-1] = ["--worker-connections", str(connections)]
    if reuse_port:
        command[-1:-1] = ["--reuse-port"]
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
    server = Gunicorn(process, f"http://{reach}:{port}")
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
            raise RuntimeError(f"gunicorn {app} did not start (log: {log})")
        time.sleep(0.1)
