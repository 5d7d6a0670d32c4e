"""How a gateway replica is served: granian (marketplace/granian_server.py, the default)
or gunicorn (gunicorn.conf.py), as MODELMARKET_HTTP_SERVER says. The command, for
`modelmarket serve` (which becomes it) and `modelmarket run` (which starts it), and
where a server's workers share their Prometheus counters.

granian answered 1.4-2.6x gunicorn's requests/s on this app (bench.gateway), and with it
a paid call costs what an unpaid one does; see the README's Production.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path

from marketplace.config import PROJECT_ROOT, Settings
from marketplace.errors import ConfigurationError

THREADS = 8  # request threads per worker process (gthread)
GRACEFUL = 30  # seconds a stopping worker has to finish its calls
# where servers' metrics folders go by default: local to the host (a data dir may be a
# volume shared by replicas, whose worker pids repeat)
METRICS_PARENT = Path(tempfile.gettempdir()) / "modelmarket-metrics"


def gunicorn_command(app: str, *, host: str, port: int, workers: int, threads: int) -> list[str]:
    """gunicorn with the shipped gunicorn.conf.py (its hooks) serving `app`
    ("module:function()")."""
    return [
        str(Path(sys.executable).parent / "gunicorn"),
        *("-c", str(PROJECT_ROOT / "gunicorn.conf.py")),
        *("-w", str(workers), "--threads", str(threads), "-b", f"{host}:{port}"),
        app,
    ]


def granian_command() -> list[str]:
    """granian as we ship it (marketplace/granian_server.py): all of it from Settings."""
    return [sys.executable, "-m", "marketplace.granian_server"]


def command(settings: Settings, *, port: int | None = None) -> list[str]:
    """The gateway's command: server, address and workers from Settings (`port`
    overrides MODELMARKET_HTTP_PORT: the caller puts it in the server's environment)."""
    if settings.http_server == "granian":
        return granian_command()
    return gunicorn_command(
        "app:create_app()",
        host=settings.http_host,
        port=settings.http_port if port is None else port,
        workers=settings.http_workers,
        threads=THREADS,
    )


def settle_worker_heap() -> None:
    """In a server worker whose app is built: what exists now (modules, the app, its
    sessions; ~190,000 objects) is moved out of the garbage collector's sight, and young
    objects are collected every 10,000 allocations instead of 700.

    Why: a full collection walked those objects every ~2 s under load, ~150 ms with the
    GIL held (a pause for every call in the worker), and collections took 15-21 us of a
    paid call's CPU; after this, ~3 us and no full collection seen (measured with
    gc.callbacks in granian workers, iris, 16 connections). Objects never freed are the
    ones frozen; a worker's later garbage is still collected."""
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def metrics_folder(server: str, parent: Path) -> Path:
    """This process's folder for a server's shared Prometheus counters under `parent`
    (`<server>-<host>-<pid>`); folders of this host's processes that are gone (a
    server killed outright) are removed on the way."""
    host = socket.gethostname()
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # workers trust what is in it (another user's planted heartbeats would get them
    # killed): a folder of ours, not a link to elsewhere
    info = parent.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigurationError(
            f"the metrics folder {parent} is a link or another user's: set"
            " MODELMARKET_METRICS_DIR to a folder of this user's"
        )
    for old in parent.iterdir():
        owner, _, pid = old.name.partition("-")[2].rpartition("-")
        if owner == host and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return parent / f"{server}-{host}-{os.getpid()}"
