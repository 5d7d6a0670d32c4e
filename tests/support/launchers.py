"""Test and bench launchers for the real parts the runtime does not start itself: a
js-ipfs daemon, a throwaway PostgreSQL cluster, and the app on a real HTTP server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from werkzeug.serving import make_server

from app import create_app
from marketplace import errors
from marketplace.config import Settings
from marketplace.devstack.ports import free_port


@dataclass
class JsIpfs:
    """A running js-ipfs daemon (npm ipfs@0.66.1): offline, loopback only."""

    process: subprocess.Popen[bytes]
    repo: Path
    api: str  # multiaddr of its Kubo-compatible RPC API
    url: str  # the same as an HTTP base URL (.../api/v0)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # a hard stop leaves these behind and blocks the next start
        for stale in ("repo.lock", "api"):
            (self.repo / stale).unlink(missing_ok=True)


def start_jsipfs(
    jsipfs_bin: Path, repo: Path, *, ready_timeout: float = 60.0, api_port: int = 0
) -> JsIpfs:
    """Start js-ipfs on a fresh or existing repo, with no network but loopback.

    The config empties Swarm, Gateway, Bootstrap and Delegates and turns MDNS off, so the
    daemon never dials out; the API listens on a free 127.0.0.1 port.
    """
    if not jsipfs_bin.exists():
        raise errors.ConfigurationError(f"js-ipfs is not installed at {jsipfs_bin}; run make setup")
    api_port = api_port or free_port()  # a restarted node keeps its address
    env = {**os.environ, "IPFS_PATH": str(repo)}
    repo.parent.mkdir(parents=True, exist_ok=True)
    if not (repo / "config").exists():
        config = {
            "Addresses": {
                "Swarm": [],
                "API": f"/ip4/127.0.0.1/tcp/{api_port}",
                "Gateway": "",
                "RPC": f"/ip4/127.0.0.1/tcp/{free_port()}",
                "Delegates": [],
            },
            "Bootstrap": [],
            "Discovery": {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}},
        }
        config_path = repo.parent / f"{repo.name}-init-config.json"
        config_path.write_text(json.dumps(config))
        subprocess.run(
            [str(jsipfs_bin), "init", "--empty-repo", str(config_path)],
            env=env,
            check=True,
            capture_output=True,
            timeout=ready_timeout,
        )
    else:
        config = json.loads((repo / "config").read_text())
        config["Addresses"]["API"] = f"/ip4/127.0.0.1/tcp/{api_port}"
        config["Addresses"]["RPC"] = f"/ip4/127.0.0.1/tcp/{free_port()}"
        (repo / "config").write_text(json.dumps(config))
    log_path = repo.parent / f"{repo.name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(jsipfs_bin), "daemon", "--offline", "--enable-preload=false"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node = JsIpfs(
        process, repo, f"/ip4/127.0.0.1/tcp/{api_port}/http", f"http://127.0.0.1:{api_port}/api/v0"
    )
    deadline = time.monotonic() + ready_timeout
    while b"Daemon is ready" not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise errors.ConfigurationError(
                f"js-ipfs did not start; see {log_path}: {log_path.read_text()[-300:]}"
            )
        time.sleep(0.05)
    return node


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Postgres:
    """A running PostgreSQL cluster of Debian's binaries, owned by the postgres user."""

    url: str  # admin URL (postgresql+psycopg://postgres@127.0.0.1:PORT/postgres)
    root: Path

    @property
    def pid(self) -> int:
        """The postmaster's pid (its children are the backends)."""
        return int((self.root / "data/postmaster.pid").read_text().split()[0])

    def restart(self) -> None:
        """Restart the cluster ("fast": open sessions are cut, as in a failover or an
        upgrade), on the same port and files."""
        data, log = str(self.root / "data"), str(self.root / "log")
        # -l: without it the new server writes to (and holds open) our capture pipe
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", data, "-l", log, "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        """Stop the cluster at once and remove its files."""
        _as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-m",
            "immediate",
            "-w",
            "stop",
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres(*args: str, check: bool = True) -> None:
    # initdb and pg_ctl refuse to run as root
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *args], check=check, capture_output=True, timeout=120
    )


def start_postgres(*, durable: bool = True, statements: bool = False) -> Postgres:
    """A fresh PostgreSQL 15 on a free loopback port in a new folder. `durable=False`
    turns fsync off (tests: ~1 s to start, nothing to keep); `statements=True` loads
    pg_stat_statements (benchmarks: CPU per statement)."""
    if not (PG_BIN / "initdb").exists():
        raise errors.ConfigurationError("PostgreSQL 15 is not installed; run make setup")
    root = Path(tempfile.mkdtemp(prefix="mm-pg-"))
    shutil.chown(root, "postgres", "postgres")
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    if statements:
        options += " -c shared_preload_libraries=pg_stat_statements -c track_io_timing=off"
    _as_postgres(
        str(PG_BIN / "initdb"),
        "-D",
        str(root / "data"),
        "-U",
        "postgres",
        "-A",
        "trust",
        "--no-sync",
    )
    _as_postgres(
        str(PG_BIN / "pg_ctl"),
        "-D",
        str(root / "data"),
        "-l",
        str(root / "log"),
        "-w",
        "-o",
        options,
        "start",
    )
    return Postgres(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", root)


@contextmanager
def serving(settings: Settings, port: int) -> Iterator[Flask]:
    """The gateway (both API families and the storefront) for `settings` on a real,
    threaded HTTP server at 127.0.0.1:`port`, stopped on exit."""
    app = create_app(settings)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        server.shutdown()
        thread.join(5)
        app.extensions["modelmarket"].prepaid.close()
        app.extensions["modelmarket"].x402.close()
        app.extensions["modelmarket"].anchorer.stop()
