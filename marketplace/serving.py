"""How a gateway replica is served: gunicorn with gunicorn.conf.py (the default), or
granian in WSGI mode (MODELMARKET_HTTP_SERVER=granian: 1.5-2.5x gunicorn's requests/s
on this app, paid and unpaid, in bench.load; not the default because its main process
shut down when two workers were SIGKILLed at once, where gunicorn replaces them). The
command and its environment, for `modelmarket serve` (which becomes it) and
`modelmarket run` (which starts it)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from marketplace.config import PROJECT_ROOT, Settings

THREADS = 8  # request threads per worker process (gunicorn gthread / granian blocking)
GRACEFUL = 30  # seconds a stopping worker has to finish its calls
LOG_CONFIG = Path(__file__).with_name("granian_logging.json")
# where servers' metrics folders go by default: local to the host (a data dir may be a
# volume shared by replicas, whose worker pids repeat)
METRICS_PARENT = Path(tempfile.gettempdir()) / "modelmarket-metrics"


def granian_command(app: str, *, host: str, port: int, workers: int, threads: int) -> list[str]:
    """granian serving the WSGI factory `app` ("module:function"). A worker that dies is
    started again (as gunicorn does); a stopping one gets GRACEFUL seconds; its leased
    calls are given back by the prepaid keeper's exit hook."""
    return [
        str(Path(sys.executable).parent / "granian"),
        *("--interface", "wsgi", "--factory", "--no-ws"),
        *("--workers", str(workers), "--blocking-threads", str(threads)),
        *("--host", host, "--port", str(port), "--backlog", "2048"),
        *("--workers-kill-timeout", str(GRACEFUL)),
        *("--respawn-failed-workers", "--respawn-interval", "1"),
        *("--log-config", str(LOG_CONFIG)),
        app,
    ]


def gunicorn_command(app: str, *, host: str, port: int, workers: int, threads: int) -> list[str]:
    """gunicorn with the shipped gunicorn.conf.py (its hooks) serving `app`
    ("module:function()")."""
    return [
        str(Path(sys.executable).parent / "gunicorn"),
        *("-c", str(PROJECT_ROOT / "gunicorn.conf.py")),
        *("-w", str(workers), "--threads", str(threads), "-b", f"{host}:{port}"),
        app,
    ]


def command(settings: Settings, *, port: int | None = None) -> list[str]:
    """The gateway's command under the configured server."""
    bind = {
        "host": settings.http_host,
        "port": settings.http_port if port is None else port,
        "workers": settings.http_workers,
        "threads": THREADS,
    }
    if settings.http_server == "gunicorn":
        return gunicorn_command("app:create_app()", **bind)  # type: ignore[arg-type]
    return granian_command("app:create_app", **bind)  # type: ignore[arg-type]


def metrics_folder(server: str, parent: Path) -> Path:
    """This process's folder for a server's shared Prometheus counters under `parent`
    (`<server>-<host>-<pid>`); folders of this host's processes that are gone (a
    server killed outright) are removed on the way."""
    host = socket.gethostname()
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        owner, _, pid = old.name.partition("-")[2].rpartition("-")
        if owner == host and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return parent / f"{server}-{host}-{os.getpid()}"


def metrics_environment(parent: Path) -> dict[str, str]:
    """A fresh folder under `parent` where one granian server's workers share their
    Prometheus counters, named for prometheus-client and for Settings (gunicorn.conf.py
    makes gunicorn's)."""
    folder = metrics_folder("granian", parent)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return {"PROMETHEUS_MULTIPROC_DIR": str(folder), "MODELMARKET_METRICS_DIR": str(folder)}


def environment(settings: Settings) -> dict[str, str]:
    """What the configured server's processes need in their environment."""
    if settings.http_server == "gunicorn":
        return {}
    return metrics_environment(settings.metrics_dir or METRICS_PARENT)
