"""Peer model servers for bench/load.py, serving the same ONNX model unpaid: MLServer
1.7.1 (its OIP v2 API, a custom onnxruntime runtime) and BentoML 1.4 (its own JSON API),
each from its own venv under .bench-peers/<name> (`make bench-peers`), outside the
runtime's dependencies. Nothing here installs or downloads anything."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from marketplace.config import PROJECT_ROOT
from marketplace.devstack.ports import free_port

HERE = Path(__file__).resolve().parent
VENVS = PROJECT_ROOT / ".bench-peers"
PEERS = ("mlserver", "bentoml")
WORKERS = 2  # the gateway's workers per replica


@dataclass
class Peer:
    """A running peer server and the request that drives it."""

    name: str
    process: subprocess.Popen[bytes]
    url: str  # its infer endpoint
    body: bytes
    headers: dict[str, str]
    log: Path

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to its process group and to every descendant (BentoML's worker
        processes run in sessions of their own), then SIGKILL to what is left."""
        pids = _descendants(self.process.pid)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        _signal(pids, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        deadline = time.monotonic() + timeout
        while any(Path(f"/proc/{pid}").exists() for pid in pids):
            if time.monotonic() > deadline:
                _signal(pids, signal.SIGKILL)
                break
            time.sleep(0.1)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def missing(name: str) -> str | None:
    """Why peer `name` cannot run here, or None."""
    if not (VENVS / name / "bin" / name).exists():
        return "not installed (make bench-peers)"
    return None


def start_peer(name: str, model: Path, body_oip: bytes, work: Path) -> Peer:
    """Start peer `name` on a free 127.0.0.1 port with WORKERS worker processes and
    return once its ready endpoint answers 200 (RuntimeError, with the log's tail, if
    it exits or takes over two minutes). `body_oip` is the gateway's OIP v2 JSON body,
    which MLServer takes as it is."""
    port = free_port()
    log = work / f"{name}.log"
    env = {**os.environ, "BENCH_MODEL": str(model), "BENCH_WORKERS": str(WORKERS)}
    if name == "mlserver":
        # parallel_workers and the model come from settings.json / model-settings.json;
        # no usage telemetry, and OpenTelemetry tracing is off unless tracing_server is set
        env |= {
            "MLSERVER_HTTP_PORT": str(port),
            "MLSERVER_GRPC_PORT": str(free_port()),
            "MLSERVER_METRICS_PORT": str(free_port()),
            "MLSERVER_METRICS_DIR": str(work / "mlserver-metrics"),
        }
        command = [str(VENVS / name / "bin" / "mlserver"), "start", str(HERE / "mlserver")]
        url = f"http://127.0.0.1:{port}/v2/models/iris"
        ready, infer = url + "/ready", url + "/infer"
        body, headers = body_oip, {"Content-Type": "application/json"}
    elif name == "bentoml":
        env |= {"BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(work / "bentoml-home")}
        command = [
            str(VENVS / name / "bin" / "bentoml"),
            "serve",
            "service:Onnx",
            "--working-dir",
            str(HERE / "bentoml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        ready, infer = f"http://127.0.0.1:{port}/readyz", f"http://127.0.0.1:{port}/infer"
        body = b'{"features":[[5.1,3.5,1.4,0.2]]}'
        headers = {"Content-Type": "application/json"}
    else:
        raise ValueError(f"unknown peer {name}")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, env=env, cwd=work, stdout=out, stderr=out, start_new_session=True
        )
    peer = Peer(name, process, infer, body, headers, log)
    deadline = time.monotonic() + 120
    while True:
        try:
            # http on loopback, a URL we built
            with urllib.request.urlopen(ready, timeout=5) as answer:  # noqa: S310
                if answer.status == 200:
                    return peer
        except (OSError, urllib.error.HTTPError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            peer.stop()
            tail = log.read_text(errors="replace")[-400:]
            raise RuntimeError(f"{name} did not start: {tail}")
        time.sleep(0.25)
