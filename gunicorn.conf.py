"""gunicorn's configuration for the gateway, what `modelmarket serve` runs with
MODELMARKET_HTTP_SERVER=gunicorn (granian is the default):

    gunicorn -c gunicorn.conf.py 'app:create_app()'

Address and worker count come from Settings (MODELMARKET_HTTP_HOST, _HTTP_PORT,
_HTTP_WORKERS); command-line flags override any of it. gthread workers, each with its
own SO_REUSEPORT socket (with one shared socket the first worker to wake took every
keep-alive connection). A worker told to stop (SIGTERM, a deploy) takes no new
connections, finishes its calls within `graceful_timeout`, then writes the calls it
served and gives its unspent leased calls back (`worker_exit`); one killed outright is
covered by the lease TTL instead.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from marketplace import logs, serving
from marketplace.config import load_settings

_settings = load_settings()

# Prometheus counters shared by the workers (prometheus-client's multiprocess mode): a
# folder per master (host and pid: replicas may share a disk), named before any worker
# imports prometheus_client, so the workers (forked from here) inherit it. A HUP reloads
# this file with the folder already set: it is kept, not nested.
_parent = _settings.metrics_dir or serving.METRICS_PARENT
_name = f"gunicorn-{socket.gethostname()}-{os.getpid()}"
_metrics = _parent if _parent.name == _name else serving.metrics_folder("gunicorn", _parent)
_metrics.mkdir(parents=True, exist_ok=True)
os.environ.update(
    {"PROMETHEUS_MULTIPROC_DIR": str(_metrics), "MODELMARKET_METRICS_DIR": str(_metrics)}
)
logconfig_dict = logs.gunicorn_logconfig(_settings)

bind = f"{_settings.http_host}:{_settings.http_port}"
workers = _settings.http_workers
worker_class = "gthread"
threads = 8
reuse_port = True
# A worker silent this long is killed and replaced (MODELMARKET_WORKER_TIMEOUT; default
# well above the longest inference plus an x402 settlement's wait).
timeout = max(1, round(_settings.silent_worker_timeout))
graceful_timeout = serving.GRACEFUL
keepalive = 5
# gunicorn 27's control socket is one path per user: a second replica on the host would
# take the first one's. Nothing here uses it.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """A fresh metrics folder: counters restart with the server, as Prometheus expects."""
    shutil.rmtree(_metrics, ignore_errors=True)
    _metrics.mkdir(parents=True, exist_ok=True)


def on_exit(server: Any) -> None:
    shutil.rmtree(_metrics, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    """A worker that is gone no longer counts in live gauges (prometheus-client's
    multiprocess mode; none of ours is one today, so this removes nothing yet)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(_metrics))  # type: ignore[no-untyped-call]


def post_worker_init(worker: Any) -> None:
    """The worker has built the app: its heap settled (`serving.settle_worker_heap`),
    then say it takes connections (a replica that shares its port with others is ready
    when its own workers are, not when the port answers)."""
    serving.settle_worker_heap()
    worker.log.info("worker %s serving", worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """Settle what the worker holds: its served calls written, its leases given back
    (the prepaid keeper), its x402 reconciler and anchorer stopped. Safe to run twice (the keeper's
    atexit hook does the same when the interpreter exits)."""
    app = getattr(worker, "wsgi", None)
    gateway = getattr(app, "extensions", {}).get("modelmarket")
    if gateway is not None:
        gateway.close()
