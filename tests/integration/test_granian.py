"""granian as we ship it (marketplace/granian_server.py), real processes: what it adds to
granian is what gunicorn gave us. A worker stopped gracefully writes its calls and gives
its leases back; a worker whose interpreter is stuck is killed after the worker timeout
and replaced; workers that die again soon after their respawn are replaced however often
(granian alone stops the whole server then); a worker that cannot build the app stops
the server (exit 3) with one clear line; the metrics folder lives as long as the server
and is refused when another user's."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import requests
from sqlalchemy import func, select

from inference import codecs
from marketplace import serving
from marketplace.db.engine import make_engine, session_factory
from marketplace.db.tables import Usage
from marketplace.devstack.ports import free_port
from marketplace.payments.prepaid import ledger
from tests.support.replicas import serve
from tests.support.world import World

pytestmark = pytest.mark.slow

BODY, HEADERS = codecs.encode_request({"features": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)})


def paid_call(url: str, key: str) -> int:
    r = requests.post(
        url, data=BODY, headers={**HEADERS, "Authorization": f"Bearer {key}"}, timeout=30
    )
    return r.status_code


def test_a_worker_stopped_gracefully_writes_its_calls_and_gives_its_leases_back(
    world: World, sqlite_url: str, tmp_path
):
    """granian's workers are multiprocessing children that leave through os._exit: no
    atexit hook runs in them; `Gateway.close` runs through multiprocessing's finalizers."""
    server, key, buyer, _ = serve(world, sqlite_url, tmp_path, 100)
    parent = world.settings.data_dir / "metrics"  # replica_env's MODELMARKET_METRICS_DIR
    try:
        url = f"{server.url}/v2/models/{world.model_id}/infer"
        assert [paid_call(url, key) for _ in range(12)] == [200] * 12
        (folder,) = parent.iterdir()  # the server's: its workers' counters and heartbeats
        assert folder.name.endswith(f"-{server.process.pid}")
        assert {f"heartbeat-{pid}" for pid in server.worker_pids()} <= {
            p.name for p in folder.iterdir()
        }
    finally:
        server.stop()
    assert server.process.returncode == 0
    assert not folder.exists()
    sessions = session_factory(make_engine(sqlite_url))
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Usage)) == 12  # every call written
        assert ledger.remaining(s, buyer, world.model_id) == 88  # the rest given back


def test_a_stuck_worker_is_replaced_and_workers_dying_again_and_again_are_too(
    world: World, sqlite_url: str, tmp_path
):
    server, key, _, log = serve(world, sqlite_url, tmp_path, 100, MODELMARKET_WORKER_TIMEOUT="2")
    url = f"{server.url}/v2/models/{world.model_id}/infer"
    try:
        # a stuck interpreter, as far as anyone outside can tell: SIGSTOP
        stuck = server.worker_pids()[0]
        os.kill(stuck, signal.SIGSTOP)
        deadline = time.monotonic() + 20
        while stuck in server.worker_pids():
            assert time.monotonic() < deadline, "a silent worker was not killed"
            time.sleep(0.1)
        server.wait_serving(3)
        assert f"(pid {stuck}) silent for" in log.read_text()
        # the replacement dies within a second of serving, three times over: granian
        # alone would stop the server at the second death (its 5.5 s crash-loop rule)
        for serving_lines in (4, 5, 6):
            victim = max(server.worker_pids())  # the newest worker
            os.kill(victim, signal.SIGKILL)
            server.wait_serving(serving_lines)
        assert server.process.poll() is None, "the server stopped"
        assert [paid_call(url, key) for _ in range(6)] == [200] * 6
    finally:
        server.stop()


def test_a_worker_that_cannot_build_the_app_stops_the_server(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MODELMARKET_DATA_DIR": str(tmp_path),
        "MODELMARKET_DATABASE_URL": "nosuchdialect://x",  # the app's engine cannot be made
        "MODELMARKET_HTTP_PORT": str(port),
        "MODELMARKET_METRICS_DIR": str(tmp_path / "metrics"),
    }
    done = subprocess.run(
        serving.granian_command(),
        env=env,
        cwd=serving.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3  # gunicorn's boot error too: a supervisor can tell it
    assert "failed to build the app: stopping" in done.stderr
    assert list((tmp_path / "metrics").iterdir()) == []  # its metrics folder is gone
