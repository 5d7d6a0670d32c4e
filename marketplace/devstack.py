"""The embedded default: a local anvil chain with the contracts deployed and demo
accounts funded, its state kept in the data dir across restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_utils.address import to_checksum_address
from web3 import Web3

from marketplace import chain, errors
from marketplace.config import Settings

# anvil's default dev mnemonic: its keys are public knowledge and only ever hold
# play money on the local chain. They are never printed or logged.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEMO_ACCOUNTS = 5  # account 0 deploys and owns; 1..4 are demo sellers and buyers
DEMO_TOKENS = 1_000_000 * 10**18
ANVIL_CHAIN_ID = 31337


def dev_key(index: int) -> str:
    """The 0x-hex key of anvil's dev account `index` (public test keys, play money)."""
    Account.enable_unaudited_hdwallet_features()
    acct = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + str(acct.key.hex()).removeprefix("0x")


def dev_signers(count: int = DEMO_ACCOUNTS) -> list[chain.Signer]:
    """Signers for anvil's first `count` dev accounts."""
    return [chain.Signer(dev_key(i)) for i in range(count)]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Anvil:
    """A running anvil process."""

    process: subprocess.Popen[bytes]
    rpc_url: str
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        """Stop anvil gracefully (it writes its state on the way out), then for sure."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_anvil(
    anvil_bin: Path,
    *,
    state_file: Path | None = None,
    port: int = 0,
    log_path: Path | None = None,
    extra_args: tuple[str, ...] = (),
    chain_id: int = ANVIL_CHAIN_ID,
    ready_timeout: float = 15.0,
) -> Anvil:
    """Start anvil on 127.0.0.1 and wait until it answers JSON-RPC.

    With `state_file`, the chain is loaded from it and written back on exit and
    every few seconds (so a hard kill loses little).
    """
    if not anvil_bin.exists():
        raise errors.ConfigurationError(f"anvil is not installed at {anvil_bin}; run `make setup`")
    port = port or free_port()
    args = [
        str(anvil_bin),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
    ]
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        args += ["--state", str(state_file), "--state-interval", "5"]
    args += list(extra_args)
    log_path = log_path or Path(os.devnull)
    with open(log_path, "ab") as log:
        # Its own session: a Ctrl-C reaches us, and we decide how anvil stops.
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    rpc_url = f"http://127.0.0.1:{port}"
    anvil = Anvil(process, rpc_url, log_path)
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            raise errors.ChainUnavailable(
                f"anvil exited with code {process.returncode} at start; see {log_path}"
            )
        try:
            chain.connect(rpc_url, timeout=1.0)
            return anvil
        except errors.ChainUnavailable:
            if time.monotonic() > deadline:
                anvil.stop()
                raise errors.ChainUnavailable(
                    f"anvil did not answer on {rpc_url} within {ready_timeout:g} s"
                ) from None
            time.sleep(0.03)


def deployment_is_live(w3: Web3, deployment: chain.Deployment) -> bool:
    """True when `deployment` is on this chain: same chain id, code at both addresses."""
    with chain.rpc_errors():
        if w3.eth.chain_id != deployment.chain_id:
            return False
        return all(
            len(w3.eth.get_code(to_checksum_address(a))) > 0
            for a in (deployment.marketplace, deployment.token)
        )


def ensure_deployment(
    w3: Web3,
    settings: Settings,
    signers: list[chain.Signer],
    *,
    progress: Callable[[str], None] = lambda _msg: None,
) -> tuple[chain.Deployment, bool]:
    """Reuse the recorded deployment if it is live on `w3`, else deploy and fund the
    demo accounts. Returns (deployment, newly_deployed)."""
    path = settings.deployment_path
    if path.exists():
        recorded = chain.Deployment.load(path)
        if deployment_is_live(w3, recorded):
            return recorded, False
        progress(f"the deployment in {path} is not on this chain; deploying anew")
    owner, *demo = signers
    progress("deploying MarketToken and ModelMarketplace")
    deployment = chain.deploy_marketplace(
        w3, owner, settings.artifacts_dir, fee_bps=settings.fee_bps, timeout=settings.tx_timeout
    )
    market = chain.Marketplace(w3, deployment, settings.artifacts_dir, timeout=settings.tx_timeout)
    for signer in demo:
        chain.send(
            w3,
            market.token.functions.mint(signer.address, DEMO_TOKENS),
            owner,
            settings.artifacts_dir,
            timeout=settings.tx_timeout,
        )
    progress(f"funded {len(demo)} demo accounts with {DEMO_TOKENS // 10**18:,} MMT each")
    deployment.save(path)
    return deployment, True


@contextmanager
def running(
    settings: Settings, *, progress: Callable[[str], None] = lambda _msg: None
) -> Iterator[tuple[str, chain.Deployment, bool]]:
    """The embedded chain for as long as the block runs: (rpc_url, deployment, new)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    anvil: Anvil | None = None
    try:
        if settings.rpc_url:
            rpc_url = settings.rpc_url
            if settings.private_key is None:
                raise errors.ConfigurationError(
                    "MODELMARKET_PRIVATE_KEY is needed to deploy to MODELMARKET_RPC_URL"
                )
            signers = [chain.Signer(settings.private_key)]
        else:
            anvil = start_anvil(
                settings.anvil_bin,
                state_file=settings.data_dir / "anvil-state.json",
                port=settings.anvil_port,
                log_path=settings.data_dir / "anvil.log",
            )
            rpc_url = anvil.rpc_url
            progress(f"anvil is up on {rpc_url} (pid {anvil.process.pid})")
            signers = dev_signers()
        w3 = chain.connect(rpc_url, timeout=settings.rpc_timeout)
        deployment, new = ensure_deployment(w3, settings, signers, progress=progress)
        if anvil is not None:
            # other processes (`modelmarket indexer`) find the embedded chain here
            runtime_path(settings).write_text(json.dumps({"rpc_url": rpc_url}))
        yield rpc_url, deployment, new
    finally:
        if anvil is not None:
            runtime_path(settings).unlink(missing_ok=True)
            anvil.stop()


def runtime_path(settings: Settings) -> Path:
    """Where a running embedded default records its chain's RPC URL."""
    return settings.data_dir / "chain.json"


def rpc_url_for(settings: Settings) -> str:
    """MODELMARKET_RPC_URL, else the embedded chain that `modelmarket run` started."""
    if settings.rpc_url:
        return settings.rpc_url
    try:
        return str(json.loads(runtime_path(settings).read_text())["rpc_url"])
    except (FileNotFoundError, KeyError, ValueError):
        raise errors.ConfigurationError(
            "no chain to talk to: set MODELMARKET_RPC_URL, or start `make run` first"
        ) from None


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


def start_jsipfs(jsipfs_bin: Path, repo: Path, *, ready_timeout: float = 60.0) -> JsIpfs:
    """Start js-ipfs on a fresh or existing repo, with no network but loopback.

    The config empties Swarm, Gateway, Bootstrap and Delegates and turns MDNS off, so the
    daemon never dials out; the API listens on a free 127.0.0.1 port.
    """
    if not jsipfs_bin.exists():
        raise errors.ConfigurationError(f"js-ipfs is not installed at {jsipfs_bin}; run make setup")
    api_port = free_port()
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


def start_postgres(*, durable: bool = True) -> Postgres:
    """A fresh PostgreSQL 15 on a free loopback port in a new folder. `durable=False`
    turns fsync off (tests: ~1 s to start, nothing to keep)."""
    if not (PG_BIN / "initdb").exists():
        raise errors.ConfigurationError("PostgreSQL 15 is not installed; run make setup")
    root = Path(tempfile.mkdtemp(prefix="mm-pg-"))
    shutil.chown(root, "postgres", "postgres")
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
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
) -> Gunicorn:
    """gunicorn serving `app` ("module:factory()") on `host`:`port` (0: a free loopback
    port), in its own process group, once it answers HTTP on `ready_path`. `connections` caps each
    worker's open connections (a worker at the cap leaves new ones to the others);
    `reuse_port` gives each worker its own SO_REUSEPORT socket, so the kernel spreads
    new connections over the workers instead of the first to wake taking them."""
    port = port or free_port()
    command = [str(Path(sys.executable).parent / "gunicorn"), "-w", str(workers)]
    command += ["--threads", str(threads), "-b", f"{host}:{port}", app]
    if connections:
        command[-1:-1] = ["--worker-connections", str(connections)]
    if reuse_port:
        command[-1:-1] = ["--reuse-port"]
    with open(log or os.devnull, "ab") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            cwd=Path(__file__).resolve().parents[1],
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
